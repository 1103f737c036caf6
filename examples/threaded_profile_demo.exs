# The thread profile: one Python process per worker running several calls
# at once in threads (for tools that release the GIL: NumPy, I/O, or
# free-threaded Python 3.13+), beside the process profile, where each
# worker process runs one call at a time.
#
#     mix run examples/threaded_profile_demo.exs

defmodule ThreadedProfileDemo do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 46) <> inspect(value, pretty: true, width: 90))

  def run do
    Application.stop(:snakepit)
    # The thread pool's adapter (examples/python/threaded_demo.py) must be
    # thread-safe: Snakepit refuses to run other adapters in threads.
    Application.put_env(:snakepit, :python_path, [Path.expand("python", __DIR__)])

    Application.put_env(:snakepit, :pools, [
      %{name: :default, pool_size: 2},
      %{
        name: :threads,
        worker_profile: :thread,
        pool_size: 1,
        threads_per_worker: 8,
        adapter_args: ["--adapter", "threaded_demo.ThreadedDemo"]
      }
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete()

    for pool <- [:default, :threads] do
      {elapsed, pids} = timed(fn -> sleep_calls(pool, 8) end)
      workers = length(Snakepit.list_workers(pool))

      show("#{pool}: 8 calls of 100 ms on #{workers} worker(s)", %{
        elapsed_ms: elapsed,
        os_processes: pids |> Enum.map(&elem(&1, 0)) |> Enum.uniq() |> length(),
        threads: pids |> Enum.map(&elem(&1, 1)) |> Enum.uniq() |> length()
      })
    end

    show(
      "thread pool stats",
      Map.take(Snakepit.get_stats(:threads), [:workers, :requests])
    )
  end

  defp sleep_calls(pool, n) do
    1..n
    |> Task.async_stream(fn _ -> Snakepit.execute("sleep", %{ms: 100}, pool: pool) end,
      max_concurrency: n,
      timeout: 30_000
    )
    |> Enum.map(fn {:ok, {:ok, %{"pid" => pid} = r}} -> {pid, r["thread"]} end)
  end

  defp timed(fun) do
    started = System.monotonic_time(:millisecond)
    result = fun.()
    {System.monotonic_time(:millisecond) - started, result}
  end
end

ThreadedProfileDemo.run()
