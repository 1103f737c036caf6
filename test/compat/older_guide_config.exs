# The older guide's configuration, as written there: its timeout and
# cleanup keys, a gRPC port range, python_adapter as "module:Class". Then
# upstream's per-worker API on one of the pool's workers.
Application.put_env(:snakepit, :pooling_enabled, true)
Application.put_env(:snakepit, :adapter_module, Snakepit.Adapters.GRPCPython)
Application.put_env(:snakepit, :grpc_config, %{base_port: 50051, port_range: 100})
Application.put_env(:snakepit, :pool_config, %{pool_size: 2})

Application.put_env(
  :snakepit,
  :python_adapter,
  "snakepit_bridge.adapters.showcase:ShowcaseAdapter"
)

for {key, value} <- [
      pool_startup_timeout: 10_000,
      pool_queue_timeout: 5_000,
      worker_init_timeout: 20_000,
      worker_health_check_interval: 30_000,
      worker_shutdown_grace_period: 5_000,
      cleanup_retry_interval: 100,
      cleanup_max_retries: 10,
      pool_max_queue_size: 1000
    ],
    do: Application.put_env(:snakepit, key, value)

Snakepit.run_as_script(
  fn ->
    {:ok, %{"status" => "pong"}} = Snakepit.execute("ping", %{})

    # The settings took: the mapped ones set what they name.
    10_000 = Snakepit.Defaults.pool_startup_timeout()
    5_000 = Snakepit.Defaults.graceful_shutdown_timeout_ms()
    30_000 = Snakepit.Defaults.lifecycle_health_check_interval()
    100 = Snakepit.Defaults.cleanup_poll_interval_ms()

    [worker_id | _] = Snakepit.Pool.Registry.list_workers()
    {:ok, %{"result" => 8}} = Snakepit.GRPCWorker.execute(worker_id, "add", %{a: 5, b: 3})
    {:ok, %{healthy: true}} = Snakepit.GRPCWorker.get_health(worker_id)

    :ok =
      Snakepit.GRPCWorker.execute_stream(worker_id, "stream_data", %{count: 2}, fn chunk ->
        true = is_map(chunk)
      end)

    {:ok, connection} = Snakepit.GRPCWorker.get_channel(worker_id)
    {:ok, _} = Snakepit.Adapters.GRPCPython.grpc_execute(connection, "s-1", "ping", %{})
    true = Snakepit.Adapters.GRPCPython.uses_grpc?()

    IO.puts("COMPAT OK")
  end,
  timeout: 60_000
)
