defmodule Snakepit.HealthMonitor.StateTest do
  use ExUnit.Case, async: true

  alias Snakepit.HealthMonitor.State

  defp monitor(opts \\ []),
    do: State.new(Keyword.merge([pool: :p, max_crashes: 3, crash_window_ms: 100], opts))

  test "defaults" do
    assert %State{
             pool: :default,
             crash_window_ms: 60_000,
             max_crashes: 10,
             check_interval_ms: 30_000
           } =
             State.new(pool: :default)
  end

  test "unhealthy at max_crashes within the window, healthy again as they expire" do
    s = monitor() |> State.record_crash("w1", %{}, 0) |> State.record_crash("w2", %{}, 10)
    assert State.healthy?(s, 10)
    s = State.record_crash(s, "w1", %{}, 20)
    refute State.healthy?(s, 20)
    refute State.healthy?(s, 99)
    # the crash at 0 leaves the window at 100
    assert State.healthy?(s, 100)
    assert State.crashes_in_window(s, 100) == 2
    assert State.crashes_in_window(s, 120) == 0
  end

  test "per-worker stats and reasons, newest first, capped at 10" do
    s =
      Enum.reduce(1..12, monitor(max_crashes: 100), fn i, acc ->
        State.record_crash(acc, "w1", %{reason: {:exit, i}}, i)
      end)

    health = State.worker_health(s, "w1", 12)
    assert health.crash_count == 12
    assert health.recent_crashes == 12
    assert health.last_crash_time == 12
    assert length(health.crash_reasons) == 10
    assert hd(health.crash_reasons) == {:exit, 12}
    assert health.healthy
  end

  test "worker health uses the same threshold and unknown workers are healthy" do
    s =
      monitor()
      |> State.record_crash("w1", %{}, 0)
      |> State.record_crash("w1", %{}, 1)
      |> State.record_crash("w1", %{}, 2)

    refute State.worker_health(s, "w1", 2).healthy
    assert State.worker_health(s, "w1", 200).healthy

    assert %{crash_count: 0, recent_crashes: 0, healthy: true, last_crash_time: nil} =
             State.worker_health(s, "w9", 2)
  end

  test "reason defaults to :unknown and string keys are accepted" do
    s =
      monitor()
      |> State.record_crash("w", %{}, 0)
      |> State.record_crash("w", %{"reason" => "oom"}, 1)

    assert State.worker_health(s, "w", 1).crash_reasons == ["oom", :unknown]
  end

  test "stats" do
    s = monitor() |> State.record_crash("a", %{}, 0) |> State.record_crash("b", %{}, 90)

    assert %{
             pool: :p,
             healthy: true,
             total_crashes: 2,
             crashes_in_window: 1,
             workers_with_crashes: 2,
             workers: %{"a" => %{crash_count: 1}, "b" => %{crash_count: 1}}
           } = State.stats(s, 150)
  end

  test "prune keeps only crashes in the window" do
    s = monitor() |> State.record_crash("a", %{}, 0) |> State.record_crash("a", %{}, 50)
    assert length(State.prune(s, 120).recent) == 1
    assert State.prune(s, 120).total_crashes == 2
  end

  test "property: healthy? agrees with a direct count over random crash sequences" do
    for _ <- 1..200 do
      window = Enum.random(1..100)
      max = Enum.random(1..5)
      s0 = State.new(pool: :p, crash_window_ms: window, max_crashes: max)

      {s, times, now} =
        Enum.reduce(1..Enum.random(0..40)//1, {s0, [], 0}, fn _, {s, times, now} ->
          now = now + Enum.random(0..30)
          {State.record_crash(s, "w#{Enum.random(1..3)}", %{}, now), [now | times], now}
        end)

      probe = now + Enum.random(0..50)
      expected = Enum.count(times, &(probe - &1 < window))
      assert State.crashes_in_window(s, probe) == expected
      assert State.healthy?(s, probe) == expected < max
      assert s.total_crashes == length(times)
    end
  end

  test "bad options and arguments raise ArgumentError naming them" do
    assert_raise ArgumentError, ~r/:pool/, fn -> State.new([]) end
    assert_raise ArgumentError, ~r/:pool/, fn -> State.new(pool: "default") end
    assert_raise ArgumentError, ~r/:max_crashes/, fn -> State.new(pool: :p, max_crashes: 0) end

    assert_raise ArgumentError, ~r/:crash_window_ms/, fn ->
      State.new(pool: :p, crash_window_ms: -1)
    end

    assert_raise ArgumentError, ~r/:check_interval_ms/, fn ->
      State.new(pool: :p, check_interval_ms: "1")
    end

    assert_raise ArgumentError, ~r/worker id/, fn ->
      State.record_crash(monitor(), :w1, %{}, 0)
    end
  end
end
