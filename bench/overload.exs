# Goodput under overload: a pool of 2 workers running a tool that takes
# 50 ms (capacity 40 calls/s), callers calling with `timeout: 300`, under
# the FIFO queue and the default `:deadline` discipline side by side.
#
#     MIX_ENV=prod mix run bench/overload.exs
#     BENCH_CALLERS=2,8,16,32,64,128 BENCH_RATES=1,2,5,10 BENCH_SECONDS=3 \
#       MIX_ENV=prod mix run bench/overload.exs
#
# Closed loop: N callers, each calling again as soon as its call returns.
# Open loop: calls arrive at k x capacity (evenly spaced), whatever the
# answers. For each: successes per second (goodput, over the time until the
# load's last call answered) and its share of capacity, the failures by reason, the median time to the error of a shed
# call (as a share of the 300 ms deadline), the p99 latency of successful
# calls, and after each load how long until a single call is served again
# at normal latency (under 100 ms). The disciplines alternate (FIFO first
# for one load, the deadline discipline first for the next).
#
# Prints the figures and writes them to bench/results/overload.txt.

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.Overload do
  import Bench.Args, only: [env_ints: 2, median: 1]

  @pool_size 2
  @tool_ms 50
  @timeout 300
  @capacity @pool_size * 1000 / @tool_ms

  def run do
    callers = env_ints("BENCH_CALLERS", [2, 8, 16, 32, 64, 128])
    rates = env_ints("BENCH_RATES", [1, 2, 5, 10])
    seconds = env_ints("BENCH_SECONDS", [3]) |> hd()

    header = [
      "overload  #{DateTime.utc_now() |> DateTime.truncate(:second)}  cores=#{System.schedulers_online()}  " <>
        "pool=#{@pool_size}  tool=#{@tool_ms} ms  timeout=#{@timeout} ms  capacity=#{round(@capacity)} calls/s  " <>
        "#{seconds} s per load",
      "load           discipline  goodput/s  % capacity   ok    failed (by reason)                      " <>
        "shed->error p50 (% deadline)   ok p99 ms   recovered in ms"
    ]

    loads =
      Enum.map(callers, &{:closed, &1}) ++ Enum.map(rates, &{:open, &1})

    rows =
      loads
      |> Enum.with_index()
      |> Enum.flat_map(fn {load, i} ->
        order = if rem(i, 2) == 0, do: [:fifo, :deadline], else: [:deadline, :fifo]
        results = Map.new(order, &{&1, measure(load, &1, seconds * 1000)})
        Enum.map([:fifo, :deadline], &row(load, &1, results[&1]))
      end)

    Application.stop(:snakepit)
    lines = header ++ rows
    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/overload.txt", Enum.join(lines, "\n") <> "\n")
    IO.puts("written to bench/results/overload.txt")
  end

  defp start_pool(discipline) do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)

    Application.put_env(:snakepit, :pools, [
      %{
        name: :default,
        pool_size: @pool_size,
        max_queue_size: 10_000,
        queue: [discipline: discipline]
      }
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 60_000)
    # Warm: the pool learns the tool's run time.
    for _ <- 1..4, do: {:ok, _} = Snakepit.execute("sleep", %{"ms" => @tool_ms})
  end

  defp call do
    started = System.monotonic_time(:microsecond)
    result = Snakepit.execute("sleep", %{"ms" => @tool_ms}, timeout: @timeout)
    {result, (System.monotonic_time(:microsecond) - started) / 1000}
  end

  defp measure(load, discipline, window_ms) do
    start_pool(discipline)
    parent = self()
    started_at = System.monotonic_time(:millisecond)
    stop_at = started_at + window_ms

    outcomes =
      case load do
        {:closed, n} ->
          for _ <- 1..n do
            spawn_link(fn -> send(parent, {:done, closed_loop(stop_at, [])}) end)
          end

          Enum.flat_map(1..n, fn _ ->
            receive do
              {:done, list} -> list
            end
          end)

        {:open, k} ->
          interval_us = round(1_000_000 / (@capacity * k))
          started = System.monotonic_time(:microsecond)
          count = div(window_ms * 1000, interval_us)

          for i <- 0..(count - 1) do
            wait_until(started + i * interval_us)
            spawn_link(fn -> send(parent, {:done, [call()]}) end)
          end

          Enum.flat_map(1..count, fn _ ->
            receive do
              {:done, list} -> list
            end
          end)
      end

    # Goodput over the time until the last call of the load answered
    # (calls started in the window may end after it).
    elapsed = System.monotonic_time(:millisecond) - started_at
    recovered = recovery_ms()
    %{outcomes: outcomes, window_ms: max(elapsed, window_ms), recovered_ms: recovered}
  end

  defp closed_loop(stop_at, acc) do
    if System.monotonic_time(:millisecond) >= stop_at,
      do: acc,
      else: closed_loop(stop_at, [call() | acc])
  end

  defp wait_until(at_us) do
    left = at_us - System.monotonic_time(:microsecond)
    if left > 1_000, do: Process.sleep(div(left, 1000))
  end

  # After the load: how long until one call is served at normal latency.
  defp recovery_ms do
    started = System.monotonic_time(:millisecond)

    Stream.repeatedly(&call/0)
    |> Enum.find(fn {result, ms} -> match?({:ok, _}, result) and ms < 100 end)

    System.monotonic_time(:millisecond) - started
  end

  defp row(load, discipline, %{outcomes: outcomes, window_ms: window_ms, recovered_ms: rec}) do
    ok = for {{:ok, _}, ms} <- outcomes, do: ms
    failed = for {{:error, e}, ms} <- outcomes, do: {reason(e), ms}
    goodput = length(ok) * 1000 / window_ms
    shed = for {:overloaded, ms} <- failed, do: ms

    by_reason =
      failed
      |> Enum.frequencies_by(&elem(&1, 0))
      |> Enum.sort()
      |> Enum.map_join(" ", fn {r, n} -> "#{r}=#{n}" end)

    shed_p50 =
      if shed == [],
        do: "-",
        else: "#{fmt(median(shed))} ms (#{fmt(median(shed) * 100 / @timeout)}%)"

    p99 = if ok == [], do: "-", else: fmt(percentile(ok, 0.99))

    load_text =
      case load do
        {:closed, n} -> "#{n} callers"
        {:open, k} -> "#{k}x arrivals"
      end

    Enum.join(
      [
        String.pad_trailing(load_text, 14),
        String.pad_trailing(to_string(discipline), 11),
        String.pad_leading(fmt(goodput), 9),
        String.pad_leading(fmt(goodput * 100 / @capacity) <> "%", 11),
        String.pad_leading(to_string(length(ok)), 6),
        "   " <> String.pad_trailing(if(by_reason == "", do: "-", else: by_reason), 38),
        String.pad_trailing(shed_p50, 30),
        String.pad_leading(p99, 9),
        String.pad_leading(to_string(rec), 14)
      ],
      " "
    )
  end

  defp reason(%Snakepit.Error{details: %{reason: reason}}) when is_atom(reason), do: reason
  defp reason(%Snakepit.Error{category: category}), do: category

  defp percentile(values, q) do
    sorted = Enum.sort(values)
    Enum.at(sorted, min(round(q * length(sorted)), length(sorted) - 1))
  end

  defp fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 1)
  defp fmt(x), do: to_string(x)
end

Bench.Overload.run()
