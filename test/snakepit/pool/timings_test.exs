defmodule Snakepit.Pool.TimingsTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.Timings

  defp ms(n), do: System.convert_time_unit(n, :millisecond, :native)

  test "buckets are exact below 16 µs and within 12.5% above, in order" do
    for v <- 0..15, do: assert(Timings.bucket(v) == v)

    for v <- [16, 17, 100, 1_000, 12_345, 1_000_000, 3_600_000_000] do
      i = Timings.bucket(v)
      low = Timings.lower_bound(i)
      high = Timings.lower_bound(i + 1)
      assert low <= v and v < high, "#{v} not in [#{low}, #{high})"
      assert (high - low) / low <= 0.125
    end

    buckets = Enum.map(1..100_000//97, &Timings.bucket/1)
    assert buckets == Enum.sort(buckets)
  end

  test "half-windows alternate for negative epochs too (monotonic time may be negative)" do
    assert Enum.map(-3..2, &Timings.half_of/1) == [1, 0, 1, 0, 1, 0]
  end

  test "percentiles of recorded durations, per metric, across several pools" do
    a = Timings.new()
    b = Timings.new()
    assert Timings.percentiles([a], :run) == %{p50: nil, p90: nil, p99: nil}

    for n <- 1..100, do: Timings.record(a, :run, ms(n))
    Timings.record(b, :run, ms(1000))
    Timings.record(a, :wait, ms(5))

    %{p50: p50, p90: p90, p99: p99} = Timings.percentiles([a], :run)
    assert_in_delta p50, 50, 50 * 0.125
    assert_in_delta p90, 90, 90 * 0.125
    assert_in_delta p99, 99, 99 * 0.125
    assert_in_delta Timings.percentiles([a], :wait).p50, 5, 5 * 0.125
    # Together: the 1 s sample is the top 1%.
    assert_in_delta Timings.percentiles([a, b], :run).p99, 99, 99 * 0.125
    assert Timings.percentiles([b], :run).p50 > 900
  end

  test "many processes record at once" do
    t = Timings.new()

    1..8
    |> Enum.map(fn _ ->
      Task.async(fn -> for _ <- 1..1000, do: Timings.record(t, :wait, ms(2)) end)
    end)
    |> Task.await_many()

    # 8000 samples of 2 ms: every percentile is in the 2 ms bucket.
    assert_in_delta Timings.percentiles([t], :wait).p99, 2, 2 * 0.125
  end
end
