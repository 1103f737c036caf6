defmodule Bench.BatchBenchPool do
  @moduledoc false
  # Restarts Snakepit with one pool of `size` workers serving
  # bench/bench_adapters.py's BatchBench, all started at once, and waits
  # until every worker is ready.

  def start(size) do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :python_path, [Path.expand("bench")])

    Application.put_env(:snakepit, :pools, [
      %{
        name: :default,
        pool_size: size,
        startup_batch_size: size,
        adapter_args: ["--adapter", "bench_adapters.BatchBench"]
      }
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 60_000)
  end
end
