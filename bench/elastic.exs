# Pools that breathe, measured with the showcase adapter's `sleep` tool
# (ms: 50) and generous call timeouts (10 s, so the :deadline discipline
# never sheds here):
#
#     MIX_ENV=prod mix run bench/elastic.exs
#     BENCH_IDLE_MS=2000 BENCH_BURST_S=3 BENCH_CALLERS=32 MIX_ENV=prod mix run bench/elastic.exs
#
#   1. burst from idle: a pool with min_workers: 1, max_workers: 4 sits idle
#      (after a few warm-up calls), then 32 callers call in a closed loop
#      for BENCH_BURST_S seconds. Reported: when each scale step happened
#      and when the 4th worker was ready (target: within 2 s), the calls
#      (target: none failed), and how long after the last call the pool
#      was back to 1 worker (target: about scale_down_after_ms,
#      BENCH_IDLE_MS).
#   2. resize/2 under load: a pool of 2 and 16 callers; resize through 3,
#      4, 2, 4, 1 (one second at each size). Reported: how long each size
#      took to be reached (ready workers), the calls (target: none failed).
#   3. rolling restart under load: a pool of 4 and 16 callers;
#      Snakepit.Pool.restart(:default, rolling: true). Reported: its
#      duration and steps, the fewest ready workers seen (sampled every 2
#      ms; target: never below 3), the calls (target: none failed).
#
# Prints the figures and writes them to bench/results/elastic.txt.

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.Elastic do
  import Bench.Args, only: [env_ints: 2, median: 1]

  @tool_ms 50
  @timeout 10_000

  def run do
    [idle_ms] = env_ints("BENCH_IDLE_MS", [2_000])
    [burst_s] = env_ints("BENCH_BURST_S", [3])
    [callers] = env_ints("BENCH_CALLERS", [32])

    header =
      "elastic  #{DateTime.utc_now() |> DateTime.truncate(:second)}  cores=#{System.schedulers_online()}  " <>
        "tool=sleep #{@tool_ms} ms  timeout=#{@timeout} ms"

    lines =
      [header] ++
        burst(callers, burst_s * 1_000, idle_ms) ++
        resize_under_load(16, [3, 4, 2, 4, 1]) ++ rolling_restart(16)

    Application.stop(:snakepit)
    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/elastic.txt", Enum.join(lines, "\n") <> "\n")
    IO.puts("written to bench/results/elastic.txt")
  end

  # -- scenarios -------------------------------------------------------------

  defp burst(callers, window_ms, idle_ms) do
    start_pool(%{min_workers: 1, max_workers: 4, scale_down_after_ms: idle_ms})
    events = listen([[:snakepit, :pool, :scale], [:snakepit, :worker, :initialized]])
    # Idle: no call for a while before the burst.
    Process.sleep(500)
    send(events, :flush)

    t0 = now()
    {outcomes, last_call_at} = closed_loop(callers, t0 + window_ms)
    steps = collect_events(events)

    scale_ups =
      for {at, [:snakepit, :pool, :scale], m, %{reason: :calls_waiting}} <- steps,
          do: "#{m.from}->#{m.to} @ #{at - t0} ms"

    ready_at =
      for({at, [:snakepit, :worker, :initialized], _, _} <- steps, do: at - t0) |> Enum.sort()

    four_at = if length(ready_at) >= 3, do: Enum.at(ready_at, 2)

    # Back to one worker: how long after the burst's last call.
    back_at = await(fn -> Snakepit.get_stats().workers == 1 end, idle_ms * 5 + 10_000)
    stats = Snakepit.get_stats()

    [
      "",
      "1. burst from idle: pool 1..4, #{callers} callers for #{div(window_ms, 1000)} s, " <>
        "scale_down_after_ms=#{idle_ms}",
      "   scale steps          #{Enum.join(scale_ups, ", ")}",
      "   4 workers ready      #{fmt_ms(four_at)} after the burst began   (target: within 2000 ms)",
      "   calls                #{summary(outcomes)}   (target: 0 failed)",
      "   back to 1 worker     #{fmt_ms(back_at && back_at - last_call_at)} after the last call   " <>
        "(target: about scale_down_after_ms = #{idle_ms} ms; size now #{stats.size}, " <>
        "ready #{stats.workers})"
    ]
  end

  defp resize_under_load(callers, sizes) do
    start_pool(%{pool_size: 2})
    stop_at = :atomics.new(1, [])
    parent = self()
    loader = spawn_link(fn -> send(parent, {:loaded, closed_loop_until(callers, stop_at)}) end)

    reached =
      for n <- sizes do
        t = now()
        :ok = Snakepit.Pool.resize(:default, n)
        at = await(fn -> length(Snakepit.list_workers()) == n end, 30_000)
        Process.sleep(1_000)
        "#{n}: #{fmt_ms(at && at - t)}"
      end

    :atomics.put(stop_at, 1, 1)

    outcomes =
      receive do
        {:loaded, outcomes} -> outcomes
      end

    _ = loader

    [
      "",
      "2. resize/2 under load: pool 2, #{callers} callers, sizes #{Enum.join(sizes, ", ")} " <>
        "(1 s each)",
      "   size reached in      #{Enum.join(reached, "   ")}",
      "   calls                #{summary(outcomes)}   (target: 0 failed)"
    ]
  end

  defp rolling_restart(callers) do
    start_pool(%{pool_size: 4})
    events = listen([[:snakepit, :pool, :restart, :step], [:snakepit, :pool, :restart, :stop]])
    stop_at = :atomics.new(1, [])
    parent = self()
    spawn_link(fn -> send(parent, {:loaded, closed_loop_until(callers, stop_at)}) end)
    Process.sleep(500)

    sampler = spawn_link(fn -> sample_ready(parent, 1_000) end)
    t = now()
    result = Snakepit.Pool.restart(:default, rolling: true, timeout: 120_000)
    took = now() - t
    send(sampler, :stop)

    low =
      receive do
        {:min_ready, low} -> low
      end

    Process.sleep(500)
    :atomics.put(stop_at, 1, 1)

    outcomes =
      receive do
        {:loaded, outcomes} -> outcomes
      end

    steps =
      for {_at, [:snakepit, :pool, :restart, :step], m, _} <- collect_events(events),
          do: m.duration_ms

    [
      "",
      "3. rolling restart under load: pool 4, #{callers} callers",
      "   restart              #{inspect(result)} in #{took} ms, #{length(steps)} steps " <>
        "(per step p50 #{fmt_ms(steps != [] && median(steps))}, max #{fmt_ms(Enum.max(steps, fn -> nil end))})",
      "   fewest ready         #{low} workers   (target: never below 3)",
      "   calls                #{summary(outcomes)}   (target: 0 failed)"
    ]
  end

  # -- helpers ---------------------------------------------------------------

  defp start_pool(pool) do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)

    Application.put_env(:snakepit, :pools, [
      Map.merge(%{name: :default, max_queue_size: 10_000}, pool)
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 60_000)
    # The pool learns the tool's run time, then sits idle.
    for _ <- 1..3, do: {{:ok, _}, _} = call()
  end

  defp call do
    started = now()
    result = Snakepit.execute("sleep", %{"ms" => @tool_ms}, timeout: @timeout)
    {result, now() - started}
  end

  # `n` callers calling until `stop_at` (ms); all outcomes, and when the
  # last call answered.
  defp closed_loop(n, stop_at) do
    parent = self()

    for _ <- 1..n,
        do: spawn_link(fn -> send(parent, {:done, loop(fn -> now() >= stop_at end, [])}) end)

    outcomes = Enum.flat_map(1..n, fn _ -> receive(do: ({:done, list} -> list)) end)
    {outcomes, now()}
  end

  defp closed_loop_until(n, flag) do
    parent = self()

    for _ <- 1..n,
        do:
          spawn_link(fn ->
            send(parent, {:done, loop(fn -> :atomics.get(flag, 1) == 1 end, [])})
          end)

    Enum.flat_map(1..n, fn _ -> receive(do: ({:done, list} -> list)) end)
  end

  defp loop(stop?, acc), do: if(stop?.(), do: acc, else: loop(stop?, [call() | acc]))

  defp sample_ready(parent, low) do
    low = min(low, length(Snakepit.list_workers()))

    receive do
      :stop -> send(parent, {:min_ready, low})
    after
      2 -> sample_ready(parent, low)
    end
  end

  defp listen(events) do
    collector = spawn_link(fn -> collect([]) end)
    id = "bench-elastic-#{System.unique_integer([:positive])}"

    :ok =
      Snakepit.Telemetry.attach_many(
        id,
        events,
        fn event, m, meta, _ -> send(collector, {:event, {now(), event, m, meta}}) end,
        nil
      )

    collector
  end

  defp collect(acc) do
    receive do
      {:event, e} -> collect([e | acc])
      :flush -> collect([])
      {:get, from} -> send(from, {:events, Enum.reverse(acc)})
    end
  end

  defp collect_events(collector) do
    send(collector, {:get, self()})
    receive(do: ({:events, events} -> events))
  end

  # Polls `fun` every 5 ms: the time (ms, monotonic) it first held, or nil.
  defp await(fun, timeout_ms) do
    deadline = now() + timeout_ms

    Stream.repeatedly(fn -> now() end)
    |> Enum.find_value(fn t ->
      cond do
        fun.() -> t
        t >= deadline -> :timeout
        true -> Process.sleep(5) && nil
      end
    end)
    |> then(&if(&1 == :timeout, do: nil, else: &1))
  end

  defp summary(outcomes) do
    {ok, failed} = Enum.split_with(outcomes, &match?({{:ok, _}, _}, &1))
    latencies = for {_, ms} <- ok, do: ms

    p99 =
      if latencies == [],
        do: nil,
        else: Enum.at(Enum.sort(latencies), div(length(latencies) * 99, 100))

    reasons =
      failed
      |> Enum.frequencies_by(fn {{:error, e}, _} ->
        Map.get(e.details || %{}, :reason, e.category)
      end)
      |> Enum.map_join(" ", fn {r, n} -> "#{r}=#{n}" end)

    "#{length(ok)} ok, #{length(failed)} failed#{if reasons != "", do: " (#{reasons})"}, " <>
      "latency p50 #{fmt_ms(latencies != [] && median(latencies))} p99 #{fmt_ms(p99)}"
  end

  defp fmt_ms(nil), do: "-"
  defp fmt_ms(false), do: "-"
  defp fmt_ms(ms), do: "#{ms} ms"

  defp now, do: System.monotonic_time(:millisecond)
end

Bench.Elastic.run()
