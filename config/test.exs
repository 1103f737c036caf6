import Config

# Tests start the pools they need themselves.
config :snakepit, pooling_enabled: false

# Process registry files of test runs stay inside the build directory.
config :snakepit, data_dir: Path.expand("../_build/test/snakepit_data", __DIR__)
