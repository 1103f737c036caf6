# The cost of the wait/run timings behind get_stats (Snakepit.Pool.Timings)
# beside a trivial call, in one run: two records per call (wait and run),
# each an atomic increment. Medians of BENCH_ROUNDS rounds.
#
#     MIX_ENV=prod mix run bench/stats_timings.exs
#
# Prints the figures and writes them to bench/results/stats_timings.txt.

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.StatsTimings do
  import Bench.Args, only: [env_ints: 2, median: 1]
  alias Snakepit.Pool.Timings

  def run do
    rounds = env_ints("BENCH_ROUNDS", [5]) |> hd()
    records = 200_000
    calls = 2_000
    start_pool()
    t = Timings.new()

    samples =
      for _ <- 1..rounds do
        record_ns =
          time_ns(fn -> for _ <- 1..records, do: Timings.record(t, :run, 1_234_567) end) / records

        call_ns =
          time_ns(fn -> for _ <- 1..calls, do: {:ok, _} = Snakepit.execute("ping", %{}) end) /
            calls

        stats_ns = time_ns(fn -> for _ <- 1..100, do: Snakepit.get_stats() end) / 100
        {record_ns, call_ns, stats_ns}
      end

    record = median(Enum.map(samples, &elem(&1, 0)))
    call = median(Enum.map(samples, &elem(&1, 1)))
    stats = median(Enum.map(samples, &elem(&1, 2)))

    lines = [
      "stats_timings  #{DateTime.utc_now() |> DateTime.truncate(:second)}  rounds=#{rounds}  " <>
        "cores=#{System.schedulers_online()}  mix_env=#{Mix.env()}",
      "one Timings.record:            #{fmt(record / 1000)} us (wall, one process)",
      "a trivial call (ping, pool 1): #{fmt(call / 1000)} us (wall, one caller)",
      "two records per call:          #{fmt(200 * record / call)}% of a trivial call",
      "Snakepit.get_stats/0:          #{fmt(stats / 1000)} us (percentiles over ~250 buckets x 2 metrics)"
    ]

    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/stats_timings.txt", Enum.join(lines, "\n") <> "\n")
  end

  defp start_pool do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pools, [%{name: :default, pool_size: 1}])
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 60_000)
  end

  defp time_ns(fun) do
    started = System.monotonic_time(:nanosecond)
    fun.()
    System.monotonic_time(:nanosecond) - started
  end

  defp fmt(x), do: :erlang.float_to_binary(x / 1, decimals: 2)
end

Bench.StatsTimings.run()
