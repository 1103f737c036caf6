# A crash storm under load: a pool of 4 serves 16 callers making
# idempotent calls while a random Python process of the run (a worker or
# the fork server, from Snakepit.Pool.ProcessRegistry) is killed with
# SIGKILL every BENCH_KILL_MS (default 150) ms for BENCH_STORM_S (default
# 10) s. The crash barrier is on, so calls whose worker dies under them are
# retried on another worker.
#
#     MIX_ENV=prod mix run bench/crash_storm.exs
#     BENCH_KILL_MS=150,300 BENCH_STORM_S=10 MIX_ENV=prod mix run bench/crash_storm.exs
#
# Prints, per kill interval: calls, succeeded, failed by category, kills,
# and the time from the last kill until the pool is back to 4 ready
# workers. Targets: >= 99% of calls succeed, full capacity within 5 s.
# Written to bench/results/crash_storm.txt.

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.CrashStorm do
  import Bench.Args, only: [env_ints: 2]
  @pool_size 4
  @callers 16

  def run do
    intervals = env_ints("BENCH_KILL_MS", [150])
    storm_ms = env_int("BENCH_STORM_S", 10) * 1_000

    header = [
      "crash_storm  #{DateTime.utc_now() |> DateTime.truncate(:second)}  cores=#{System.schedulers_online()}  pool=#{@pool_size}  callers=#{@callers}  storm=#{div(storm_ms, 1000)} s",
      "kill every   calls   succeeded   success %   failed by category            kills   last kill -> full capacity"
    ]

    rows = Enum.map(intervals, &storm(&1, storm_ms))
    Application.stop(:snakepit)
    lines = header ++ rows
    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/crash_storm.txt", Enum.join(lines, "\n") <> "\n")
    IO.puts("written to bench/results/crash_storm.txt")
  end

  defp storm(kill_ms, storm_ms) do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :crash_barrier, enabled: true, max_retries: 3)

    Application.put_env(:snakepit, :pools, [
      %{name: :default, pool_size: @pool_size, startup_batch_size: @pool_size}
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 60_000)

    stop_at = System.monotonic_time(:millisecond) + storm_ms
    parent = self()

    callers =
      for n <- 1..@callers do
        spawn_link(fn -> send(parent, {:done, self(), call_loop(stop_at, n, %{})}) end)
      end

    kills = kill_loop(stop_at, kill_ms, 0)
    last_kill = System.monotonic_time(:millisecond)
    recovery = await_full_capacity(last_kill, 30_000)

    tallies =
      for pid <- callers do
        receive do
          {:done, ^pid, tally} -> tally
        end
      end

    total = Enum.reduce(tallies, %{}, &Map.merge(&1, &2, fn _, a, b -> a + b end))
    ok = Map.get(total, :ok, 0)
    calls = Enum.sum(Map.values(total))
    failed = total |> Map.delete(:ok) |> Enum.map_join(" ", fn {k, v} -> "#{k}=#{v}" end)

    [
      String.pad_trailing("#{kill_ms} ms", 13),
      String.pad_trailing("#{calls}", 8),
      String.pad_trailing("#{ok}", 12),
      String.pad_trailing("#{Float.round(ok * 100 / max(calls, 1), 2)}", 12),
      String.pad_trailing(if(failed == "", do: "-", else: failed), 30),
      String.pad_trailing("#{kills}", 8),
      if(recovery == :timeout, do: "not within 30 s", else: "#{recovery} ms")
    ]
    |> Enum.join()
  end

  defp call_loop(stop_at, n, tally) do
    if System.monotonic_time(:millisecond) >= stop_at do
      tally
    else
      outcome =
        case Snakepit.execute("echo", %{caller: n}, idempotent: true, timeout: 10_000) do
          {:ok, _} -> :ok
          {:error, %{category: category}} -> category
          {:error, other} -> other.__struct__
        end

      call_loop(stop_at, n, Map.update(tally, outcome, 1, &(&1 + 1)))
    end
  end

  defp kill_loop(stop_at, kill_ms, kills) do
    if System.monotonic_time(:millisecond) >= stop_at do
      kills
    else
      kills =
        case Snakepit.Pool.ProcessRegistry.get_active_process_pids() do
          [] ->
            kills

          pids ->
            Snakepit.ProcessKiller.kill_process(Enum.random(pids), :sigkill)
            kills + 1
        end

      receive do
      after
        kill_ms -> kill_loop(stop_at, kill_ms, kills)
      end
    end
  end

  # Full capacity: every slot has a ready worker again.
  defp await_full_capacity(since, limit_ms) do
    now = System.monotonic_time(:millisecond)

    cond do
      full?() ->
        now - since

      now - since > limit_ms ->
        :timeout

      true ->
        receive do
        after
          10 -> await_full_capacity(since, limit_ms)
        end
    end
  end

  defp full? do
    stats = Snakepit.get_stats()
    stats.workers == @pool_size and stats.slots_down == 0
  end

  defp env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      value -> String.to_integer(value)
    end
  end
end

Bench.CrashStorm.run()
