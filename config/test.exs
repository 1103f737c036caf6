import Config

# Tests start the pools they need themselves.
config :snakepit, pooling_enabled: false
