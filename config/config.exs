import Config

# Snakepit's own development and test settings. A host application sets its
# own `config :snakepit, ...`; nothing here ships with the library.
config :snakepit, pool_size: 2

import_config "#{config_env()}.exs"
