# Integration tests start real Python workers through the native core; they
# are tagged :python and run by default. `mix test --exclude python` runs the
# pure unit tests alone.
ExUnit.start(capture_log: true)
