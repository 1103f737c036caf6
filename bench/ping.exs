# Ping latency and throughput through the whole stack: Snakepit.execute/3
# -> pool checkout -> native core -> gRPC over a Unix socket -> Python.
#
#     make bench                      (MIX_ENV=prod mix run bench/ping.exs)
#     BENCH_POOL_SIZE=4 BENCH_CALLS=5000 mix run bench/ping.exs
#
# Prints the figures and writes them to bench/results/ping.txt.

defmodule Bench.Ping do
  def run do
    pool_size = env_int("BENCH_POOL_SIZE", 2)
    calls = env_int("BENCH_CALLS", 4_000)

    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pool_size, pool_size)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete()

    # Warm up every worker and the channels.
    measure(8, 400)

    lines =
      for concurrency <- [1, 8] do
        {latencies, wall_us} = measure(concurrency, calls)
        sorted = Enum.sort(latencies)

        :io_lib.format(
          "ping  pool=~B concurrency=~-2B calls=~B  ops/s=~8.1f  p50=~6.1f us  p99=~7.1f us",
          [
            pool_size,
            concurrency,
            calls,
            calls / (wall_us / 1_000_000),
            percentile(sorted, 0.50),
            percentile(sorted, 0.99)
          ]
        )
        |> IO.iodata_to_binary()
      end

    header =
      "# #{DateTime.utc_now() |> DateTime.to_iso8601()}  #{System.schedulers_online()} schedulers, Elixir #{System.version()}"

    report = Enum.join([header | lines], "\n") <> "\n"
    IO.write(report)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/ping.txt", report)
  end

  defp measure(concurrency, calls) do
    per_task = div(calls, concurrency)
    started = System.monotonic_time(:microsecond)

    latencies =
      1..concurrency
      |> Task.async_stream(
        fn _ ->
          for _ <- 1..per_task do
            t0 = System.monotonic_time(:microsecond)
            {:ok, _} = Snakepit.execute("ping", %{})
            System.monotonic_time(:microsecond) - t0
          end
        end,
        max_concurrency: concurrency,
        timeout: :infinity
      )
      |> Enum.flat_map(fn {:ok, l} -> l end)

    {latencies, System.monotonic_time(:microsecond) - started}
  end

  defp percentile(sorted, p),
    do: Enum.at(sorted, min(round(p * length(sorted)), length(sorted) - 1)) * 1.0

  defp env_int(name, default),
    do: String.to_integer(System.get_env(name, Integer.to_string(default)))
end

Bench.Ping.run()
