defmodule Snakepit.Pool.Timings do
  @moduledoc """
  How long calls waited for a worker and ran on it, per pool, over a
  sliding window, for `Snakepit.get_stats/1` (`wait_time_ms`,
  `run_time_ms`: `p50`, `p90`, `p99`).

  Recorded by the calling process itself (the lease carries the pool's
  histograms), with no message to anyone: each sample is one atomic
  increment of a histogram bucket in `:counters`.
  Buckets are log-linear (8 per power of two above 16 µs), so a percentile
  is exact to within 12.5%. The window is two half-windows of
  `@half_window_ms`: a sample lands in the half of its time, a half older
  than the previous one is cleared before it is reused, and percentiles
  read both halves (so they cover the last 30–60 s).
  """

  @half_window_ms 30_000
  @sub_buckets 8
  @linear 16
  # Up to 2^36 µs (~19 hours); longer samples land in the last bucket.
  @max_exponent 36
  @buckets @linear + (@max_exponent - 4) * @sub_buckets + 1
  @metrics [:wait, :run]

  @type metric :: :wait | :run

  @typedoc "One pool's histograms (shared memory: any process may record)."
  @opaque t :: {:counters.counters_ref(), :atomics.atomics_ref()}

  @doc "Empty histograms, made with the pool; leases carry them to callers."
  @spec new() :: t()
  def new do
    {:counters.new(2 * length(@metrics) * @buckets, [:write_concurrency]), :atomics.new(2, [])}
  end

  @doc "Records `duration` (native time units) of `metric`."
  @spec record(t(), metric(), integer()) :: :ok
  def record({counters, epochs}, metric, duration) do
    micros = :erlang.convert_time_unit(max(duration, 0), :native, :microsecond)
    epoch = epoch()
    half = half_of(epoch)

    if :atomics.get(epochs, half + 1) != epoch do
      rotate(counters, epochs, half, epoch)
    end

    slot = half * length(@metrics) + metric_index(metric)
    :counters.add(counters, slot * @buckets + bucket(micros) + 1, 1)
  rescue
    # A statistic never fails the call that records it (the caller holds a
    # leased slot at this point).
    ArgumentError -> :ok
  end

  @doc """
  `%{p50:, p90:, p99:}` in milliseconds over the window, across all of
  `timings` (one pool's, or every pool's), `nil` each when there is no
  sample.
  """
  @spec percentiles([t()], metric()) :: %{
          p50: number() | nil,
          p90: number() | nil,
          p99: number() | nil
        }
  def percentiles(timings, metric) do
    counts =
      timings
      |> Enum.map(&window_counts(&1, metric))
      |> Enum.zip_with(&Enum.sum/1)

    total = Enum.sum(counts)

    Map.new([p50: 0.50, p90: 0.90, p99: 0.99], fn {key, q} ->
      {key, if(total == 0, do: nil, else: quantile(counts, total, q))}
    end)
  end

  # -- internals -------------------------------------------------------------

  @doc false
  # Which half-window an epoch uses. Monotonic time (and so an epoch) may be
  # negative: mod, not rem.
  def half_of(epoch), do: Integer.mod(epoch, 2)

  defp epoch, do: div(:erlang.monotonic_time(:millisecond), @half_window_ms)

  # A half about to be reused is cleared first; increments racing with the
  # clear may be lost, which a statistic can afford.
  defp rotate(counters, epochs, half, epoch) do
    old = :atomics.get(epochs, half + 1)

    if :atomics.compare_exchange(epochs, half + 1, old, epoch) == :ok do
      for m <- 0..(length(@metrics) - 1), i <- 1..@buckets do
        :counters.put(counters, (half * length(@metrics) + m) * @buckets + i, 0)
      end
    end

    :ok
  end

  defp window_counts({counters, epochs}, metric) do
    now = epoch()
    halves = for half <- [0, 1], :atomics.get(epochs, half + 1) in [now, now - 1], do: half

    for i <- 1..@buckets do
      Enum.reduce(halves, 0, fn half, acc ->
        acc +
          :counters.get(counters, (half * length(@metrics) + metric_index(metric)) * @buckets + i)
      end)
    end
  end

  defp metric_index(:wait), do: 0
  defp metric_index(:run), do: 1

  @doc false
  # The bucket of a duration in µs: exact below 16, then 8 per power of two.
  def bucket(micros) when micros < @linear, do: micros

  def bucket(micros) do
    exponent = bit_length(micros) - 1
    mantissa = Bitwise.band(Bitwise.bsr(micros, exponent - 3), @sub_buckets - 1)
    min(@linear + (exponent - 4) * @sub_buckets + mantissa, @buckets - 1)
  end

  @doc false
  # The lower bound (µs) of a bucket.
  def lower_bound(index) when index < @linear, do: index

  def lower_bound(index) do
    offset = index - @linear
    exponent = div(offset, @sub_buckets) + 4
    mantissa = rem(offset, @sub_buckets)
    Bitwise.bsl(@sub_buckets + mantissa, exponent - 3)
  end

  # Exact for the durations that occur (well below 2^50 µs).
  defp bit_length(n), do: trunc(:math.log2(n)) + 1

  # The value at quantile q: the middle of the bucket holding it, in ms.
  defp quantile(counts, total, q) do
    rank = max(1, ceil(q * total))

    index =
      counts
      |> Enum.with_index()
      |> Enum.reduce_while(0, fn {count, i}, seen ->
        if seen + count >= rank, do: {:halt, {:found, i}}, else: {:cont, seen + count}
      end)
      |> then(fn {:found, i} -> i end)

    low = lower_bound(index)
    high = if index + 1 < @buckets, do: lower_bound(index + 1), else: low
    Float.round((low + high) / 2 / 1000, 3)
  end
end
