# Many calls per message (issue 33): dynamic batching of a batched tool
# beside the same work unbatched, and execute_many, on one pool of real
# workers (bench/bench_adapters.py, BatchBench), in one run.
#
#     MIX_ENV=prod mix run bench/batching.exs
#     BENCH_SECONDS=3 BENCH_POOL_SIZE=2 MIX_ENV=prod mix run bench/batching.exs
#
# 1. A tool with a fixed 2 ms of Python time per call, unbatched
#    (cost_single) and batched (cost_batched: max_batch_size 64,
#    max_batch_delay_ms 2): closed loops of 1 and 64 callers, calls/s and
#    latency. The p99 bound of the batched tool is max_batch_delay_ms + one
#    batch's run time (the median of its messages' round trips) + the
#    unbatched p99 at 1 caller.
# 2. Trivial calls (the tool returns its argument) from 256 callers, batched
#    (trivial_batched: max_batch_size 64, max_batch_delay_ms 1) and not:
#    items/s. Batches smaller than the callers leave several in flight,
#    so the two workers and the VM overlap.
# 3. execute_many of 10,000 trivial items (an ordinary tool, and the batched
#    one): items/s, the median of 5 runs.
#
# Closed loops: each caller calls again as soon as it is answered; a
# warm-up of 0.5 s precedes each measured window. Prints the figures and
# writes them to bench/results/batching.txt.

Code.require_file("support/args.exs", __DIR__)
Code.require_file("support/batch_bench_pool.exs", __DIR__)

defmodule Bench.Batching do
  import Bench.Args, only: [env_ints: 2, median: 1]

  @warmup_ms 500
  @delay_ms 2

  def run do
    seconds = env_ints("BENCH_SECONDS", [3]) |> hd()
    size = env_ints("BENCH_POOL_SIZE", [2]) |> hd()
    window = seconds * 1_000
    start_pool(size)

    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    header =
      "batching  #{DateTime.utc_now() |> DateTime.truncate(:second)}  pool=#{size} workers  " <>
        "window=#{seconds} s  cores=#{System.schedulers_online()}  load1=#{load}  mix_env=#{Mix.env()}"

    IO.puts(header)

    single1 = loop("cost_single", 1, window)
    single64 = loop("cost_single", 64, window)
    _ = run_callers("cost_batched", 64, @warmup_ms)
    {batched64, b64} = with_batches("cost_batched", fn -> measure("cost_batched", 64, window) end)
    bound = @delay_ms + b64.run_ms_p50 + single1.p99_ms

    trivial = loop("trivial", 256, window)

    _ = run_callers("trivial_batched", 256, @warmup_ms)

    {trivial_b, tb} =
      with_batches("trivial_batched", fn -> measure("trivial_batched", 256, window) end)

    many = many("trivial", 10_000, 5)
    many_b = many("trivial_batched", 10_000, 5)

    lines =
      [
        header,
        "",
        "1. a tool costing 2 ms of Python per call (calls/s, latency ms)",
        row_header(),
        row("unbatched, 1 caller", single1),
        row("unbatched, 64 callers", single64),
        row("batched, 64 callers", batched64),
        "   batched: #{b64.batches} batches, mean size #{fmt(b64.mean_size)}, delay added p50 " <>
          "#{fmt(b64.delay_ms_p50)} ms / max #{fmt(b64.delay_ms_max)} ms, batch run p50 " <>
          "#{fmt(b64.run_ms_p50)} ms",
        "   speed-up at 64 callers: #{fmt(batched64.rate / single64.rate)}x (target >= 5x)",
        "   batched p99 #{fmt(batched64.p99_ms)} ms vs bound #{fmt(bound)} ms " <>
          "(= delay #{@delay_ms} + batch run #{fmt(b64.run_ms_p50)} + unbatched p99 at 1 caller " <>
          "#{fmt(single1.p99_ms)})",
        "",
        "2. trivial calls from 256 callers on #{size} workers (items/s)",
        row_header(),
        row("unbatched, 256 callers", trivial),
        row("batched, 256 callers", trivial_b),
        "   batched: #{tb.batches} batches, mean size #{fmt(tb.mean_size)}, delay added p50 " <>
          "#{fmt(tb.delay_ms_p50)} ms; target >= 50000 items/s",
        "",
        "3. execute_many of 10000 trivial items (median of 5 runs)",
        "   ordinary tool: #{round(many.rate)} items/s (#{fmt(many.ms)} ms per list)",
        "   batched tool:  #{round(many_b.rate)} items/s (#{fmt(many_b.ms)} ms per list); " <>
          "target >= 100000 items/s"
      ]

    text = Enum.join(lines, "\n") <> "\n"
    IO.puts(Enum.drop(lines, 1) |> Enum.join("\n"))
    File.mkdir_p!("bench/results")
    File.write!("bench/results/batching.txt", text)
  end

  defp start_pool(size), do: Bench.BatchBenchPool.start(size)

  # `callers` closed loops on `tool` for `ms` (after a warm-up).
  defp loop(tool, callers, ms) do
    _ = run_callers(tool, callers, @warmup_ms)
    measure(tool, callers, ms)
  end

  defp measure(tool, callers, ms) do
    started = System.monotonic_time()
    latencies = run_callers(tool, callers, ms)

    elapsed_s =
      System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond) / 1.0e6

    sorted = Enum.sort(latencies)
    n = length(sorted)

    %{
      calls: n,
      rate: n / elapsed_s,
      p50_ms: pct(sorted, n, 0.50),
      p99_ms: pct(sorted, n, 0.99),
      max_ms: List.last(sorted) / 1000
    }
  end

  defp run_callers(tool, callers, ms) do
    stop_at = System.monotonic_time(:millisecond) + ms

    1..callers
    |> Task.async_stream(fn c -> caller(tool, c, stop_at, []) end,
      max_concurrency: callers,
      timeout: ms + 60_000
    )
    |> Enum.flat_map(fn {:ok, latencies} -> latencies end)
  end

  defp caller(tool, c, stop_at, acc) do
    if System.monotonic_time(:millisecond) >= stop_at do
      acc
    else
      t0 = System.monotonic_time()
      {:ok, _} = Snakepit.execute(tool, %{i: c})
      us = System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond)
      caller(tool, c, stop_at, [us | acc])
    end
  end

  defp pct(sorted, n, q), do: Enum.at(sorted, min(n - 1, floor(q * n))) / 1000

  # The batches that left while `fun` ran: sizes, the delay they added,
  # and their messages' round trips.
  defp with_batches(tool, fun) do
    table = :ets.new(:bench_batches, [:duplicate_bag, :public])

    Snakepit.Telemetry.attach(
      "bench-batches",
      [:snakepit, :pool, :batch],
      fn _, m, _, _ -> :ets.insert(table, {:batch, m.size, m.delay_us}) end,
      nil
    )

    Snakepit.Telemetry.attach(
      "bench-batch-runs",
      [:snakepit, :grpc_worker, :execute, :stop],
      fn _, m, meta, _ ->
        if meta.command == tool,
          do:
            :ets.insert(
              table,
              {:run, System.convert_time_unit(m.duration, :native, :microsecond)}
            )
      end,
      nil
    )

    result = fun.()
    Snakepit.Telemetry.detach("bench-batches")
    Snakepit.Telemetry.detach("bench-batch-runs")
    batches = :ets.lookup(table, :batch)
    runs = for {:run, us} <- :ets.lookup(table, :run), do: us
    delays = for {:batch, _, us} <- batches, do: us
    :ets.delete(table)

    {result,
     %{
       batches: length(batches),
       mean_size: Enum.sum(for({:batch, n, _} <- batches, do: n)) / max(length(batches), 1),
       delay_ms_p50: median(delays) / 1000,
       delay_ms_max: Enum.max(delays) / 1000,
       run_ms_p50: median(runs) / 1000
     }}
  end

  defp many(tool, n, rounds) do
    items = for i <- 1..n, do: %{i: i}
    # Warm-up.
    _ = Snakepit.execute_many(tool, items)

    times =
      for _ <- 1..rounds do
        t0 = System.monotonic_time()
        results = Snakepit.execute_many(tool, items)
        us = System.convert_time_unit(System.monotonic_time() - t0, :native, :microsecond)
        true = length(results) == n and Enum.all?(results, &match?({:ok, _}, &1))
        us
      end

    us = median(times)
    %{rate: n / (us / 1.0e6), ms: us / 1000}
  end

  defp row_header,
    do:
      "   " <>
        String.pad_trailing("", 24) <>
        String.pad_leading("calls", 9) <>
        String.pad_leading("per s", 10) <>
        String.pad_leading("p50", 9) <>
        String.pad_leading("p99", 9) <> String.pad_leading("max", 9)

  defp row(label, r) do
    "   " <>
      String.pad_trailing(label, 24) <>
      String.pad_leading("#{r.calls}", 9) <>
      String.pad_leading("#{round(r.rate)}", 10) <>
      String.pad_leading(fmt(r.p50_ms), 9) <>
      String.pad_leading(fmt(r.p99_ms), 9) <> String.pad_leading(fmt(r.max_ms), 9)
  end

  defp fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 2)
  defp fmt(x), do: fmt(x * 1.0)
end

Bench.Batching.run()
