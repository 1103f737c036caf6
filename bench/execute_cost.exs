# What one Snakepit.execute/3 costs the BEAM: reductions per call in the
# caller and in the pool process, and wall time per call, for a trivial
# tool on 2 workers (bench/bench_adapters.py, BatchBench.trivial).
#
#     MIX_ENV=prod mix run bench/execute_cost.exs
#     BENCH_CALLS=5000 BENCH_ROUNDS=5 MIX_ENV=prod mix run bench/execute_cost.exs
#
# One caller makes the calls one after the other (the figures per call are
# exact for it); then 8 callers at once (reductions summed over them). Each
# figure is the median over the rounds. Reductions count the Erlang work of
# a process (function calls, BIFs, messages); the native core's own work
# (encoding, the socket) is not in them. Prints the figures and appends
# them, with a label (BENCH_LABEL), to bench/results/execute_cost.txt.

Code.require_file("support/args.exs", __DIR__)
Code.require_file("support/batch_bench_pool.exs", __DIR__)

defmodule Bench.ExecuteCost do
  import Bench.Args, only: [env_ints: 2, median: 1]

  def run do
    calls = env_ints("BENCH_CALLS", [5_000]) |> hd()
    rounds = env_ints("BENCH_ROUNDS", [5]) |> hd()
    label = System.get_env("BENCH_LABEL") || "current"
    start_pool(2)
    pool = Process.whereis(Snakepit.Pool)
    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    # Warm-up.
    sequential(pool, 500)
    one = for _ <- 1..rounds, do: sequential(pool, calls)
    many = for _ <- 1..rounds, do: concurrent(pool, 8, div(calls, 8))

    lines = [
      "execute_cost  #{label}  #{DateTime.utc_now() |> DateTime.truncate(:second)}  " <>
        "calls=#{calls}  rounds=#{rounds}  cores=#{System.schedulers_online()}  load1=#{load}  " <>
        "mix_env=#{Mix.env()}",
      "   callers   caller red/call   pool red/call   us/call (wall)",
      line(1, one),
      line(8, many)
    ]

    IO.puts(Enum.join(lines, "\n"))
    File.mkdir_p!("bench/results")
    File.write!("bench/results/execute_cost.txt", Enum.join(lines, "\n") <> "\n\n", [:append])
  end

  defp line(callers, samples) do
    caller = median(Enum.map(samples, & &1.caller))
    pool = median(Enum.map(samples, & &1.pool))
    us = median(Enum.map(samples, & &1.us))

    "   " <>
      String.pad_leading("#{callers}", 7) <>
      String.pad_leading(:erlang.float_to_binary(caller, decimals: 0), 18) <>
      String.pad_leading(:erlang.float_to_binary(pool, decimals: 0), 16) <>
      String.pad_leading(:erlang.float_to_binary(us, decimals: 1), 17)
  end

  defp sequential(pool, n) do
    {:reductions, p0} = Process.info(pool, :reductions)
    {:reductions, c0} = Process.info(self(), :reductions)
    t0 = System.monotonic_time()
    calls(n)
    t1 = System.monotonic_time()
    {:reductions, c1} = Process.info(self(), :reductions)
    {:reductions, p1} = Process.info(pool, :reductions)

    %{
      caller: (c1 - c0) / n,
      pool: (p1 - p0) / n,
      us: System.convert_time_unit(t1 - t0, :native, :nanosecond) / 1000 / n
    }
  end

  defp concurrent(pool, callers, n) do
    {:reductions, p0} = Process.info(pool, :reductions)
    t0 = System.monotonic_time()

    reds =
      1..callers
      |> Task.async_stream(
        fn _ ->
          {:reductions, c0} = Process.info(self(), :reductions)
          calls(n)
          {:reductions, c1} = Process.info(self(), :reductions)
          c1 - c0
        end,
        max_concurrency: callers,
        timeout: :infinity
      )
      |> Enum.map(fn {:ok, r} -> r end)

    t1 = System.monotonic_time()
    {:reductions, p1} = Process.info(pool, :reductions)
    total = callers * n

    %{
      caller: Enum.sum(reds) / total,
      pool: (p1 - p0) / total,
      us: System.convert_time_unit(t1 - t0, :native, :nanosecond) / 1000 / total
    }
  end

  defp calls(0), do: :ok

  defp calls(n) do
    {:ok, _} = Snakepit.execute("trivial", %{i: n})
    calls(n - 1)
  end

  defp start_pool(size), do: Bench.BatchBenchPool.start(size)
end

Bench.ExecuteCost.run()
