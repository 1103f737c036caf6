defmodule Snakepit.HealthMonitorTest do
  use ExUnit.Case, async: true

  alias Snakepit.HealthMonitor

  defp start(opts) do
    ref = :atomics.new(1, signed: true)

    hm =
      start_supervised!(
        {HealthMonitor, Keyword.merge([pool: :test, clock: fn -> :atomics.get(ref, 1) end], opts)}
      )

    {hm, ref}
  end

  test "rolling window through the process API" do
    {hm, clock} = start(max_crashes: 2, crash_window_ms: 1_000)
    assert HealthMonitor.healthy?(hm)
    :ok = HealthMonitor.record_crash(hm, "worker_1", %{reason: :segfault})
    :atomics.put(clock, 1, 500)
    :ok = HealthMonitor.record_crash(hm, "worker_2")
    refute HealthMonitor.healthy?(hm)

    assert %{total_crashes: 2, crashes_in_window: 2, healthy: false, pool: :test} =
             stats = HealthMonitor.stats(hm)

    # Every documented field, upstream's is_healthy included.
    for key <- [
          :pool,
          :workers,
          :crash_window_ms,
          :max_crashes,
          :total_crashes,
          :check_interval_ms
        ],
        do: assert(Map.has_key?(stats, key), "stats lack #{key}")

    assert stats.is_healthy == false

    assert %{
             crash_count: 1,
             crash_reasons: [:segfault],
             healthy: true,
             is_healthy: true,
             last_crash_time: 0
           } = HealthMonitor.worker_health(hm, "worker_1")

    :atomics.put(clock, 1, 1_000)
    assert HealthMonitor.healthy?(hm)
    assert %{total_crashes: 2, crashes_in_window: 1} = HealthMonitor.stats(hm)
  end

  test "the periodic check prunes expired crashes" do
    {hm, clock} = start(crash_window_ms: 10, check_interval_ms: 5)
    :ok = HealthMonitor.record_crash(hm, "w")
    :atomics.put(clock, 1, 100)
    :erlang.trace(hm, true, [:receive])
    assert_receive {:trace, ^hm, :receive, :check}, 1_000
    assert %{crashes_in_window: 0, total_crashes: 1} = HealthMonitor.stats(hm)
    assert :sys.get_state(hm).state.recent == []
  end

  test "name is optional and usable" do
    pid = start_supervised!({HealthMonitor, name: :hm_named_test, pool: :default, max_crashes: 1})
    assert Process.whereis(:hm_named_test) == pid
    assert HealthMonitor.healthy?(:hm_named_test)
    # Calls by name reach that monitor: a crash recorded by name shows in it.
    :ok = HealthMonitor.record_crash(:hm_named_test, "w")
    assert %{total_crashes: 1, pool: :default} = HealthMonitor.stats(pid)
    refute HealthMonitor.healthy?(:hm_named_test)
  end

  test "bad options raise ArgumentError naming the option" do
    assert_raise ArgumentError, ~r/:pool/, fn -> HealthMonitor.start_link([]) end

    assert_raise ArgumentError, ~r/:max_crashes/, fn ->
      HealthMonitor.start_link(pool: :p, max_crashes: -3)
    end

    assert_raise ArgumentError, ~r/:crash_window/, fn ->
      HealthMonitor.start_link(pool: :p, crash_window: 5)
    end

    {hm, _} = start([])
    assert_raise ArgumentError, ~r/worker id/, fn -> HealthMonitor.record_crash(hm, 1, %{}) end
  end
end
