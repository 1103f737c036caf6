# Integration tests start real Python workers through the native core; they
# are tagged :python and run by default. `mix test --exclude python` runs the
# pure unit tests alone. Tests that need a writable memory cgroup (to let the
# kernel's OOM killer act on a worker) run where the machine has one.
# Tests tagged :network reach the package index (PyPI): left out unless asked
# for (`mix test --include network`, as `make test` does), so that the
# default run works offline.
exclude =
  if Snakepit.Test.MemoryCgroup.available?(), do: [:network], else: [:network, :memory_cgroup]

if :memory_cgroup in exclude,
  do: IO.puts("no writable memory cgroup here: :memory_cgroup tests are skipped")

# The call transport pools use unless they set one: the lane by default;
# `make test` runs the integration suites once more over gRPC.
case System.get_env("SNAKEPIT_TEST_CALL_TRANSPORT") do
  nil -> :ok
  "lane" -> Application.put_env(:snakepit, :call_transport, :lane)
  "grpc" -> Application.put_env(:snakepit, :call_transport, :grpc)
end

# Tests restart the application hundreds of times: OTP's notice for each
# normal stop ("Application snakepit exited: :stopped") is dropped, so that a
# passing run prints its results. Other exits are still logged.
:ok =
  :logger.add_primary_filter(
    :snakepit_test_app_stopped,
    {&Snakepit.Test.LogFilters.drop_app_stopped/2, nil}
  )

ExUnit.start(capture_log: true, exclude: exclude)
