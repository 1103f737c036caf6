defmodule Snakepit.HeartbeatMonitorTest do
  use ExUnit.Case, async: true

  alias Snakepit.HeartbeatMonitor

  # A stand-in worker: a process that reports how it ends.
  defp worker do
    parent = self()

    spawn(fn ->
      Process.flag(:trap_exit, true)

      receive do
        {:EXIT, _from, reason} -> send(parent, {:worker_exit, reason})
      end
    end)
  end

  defp start(opts) do
    defaults = [ping_interval_ms: 10, timeout_ms: 20, max_missed_heartbeats: 2, worker_id: "w"]
    {:ok, pid} = HeartbeatMonitor.start_link(Keyword.merge(defaults, opts))
    pid
  end

  test "answered pings keep the worker" do
    parent = self()

    monitor =
      start(
        worker_pid: worker(),
        ping_fun: fn ts ->
          send(parent, {:pinged, self(), ts})
          :ok
        end
      )

    for _ <- 1..5 do
      assert_receive {:pinged, ^monitor, ts}, 1_000
      HeartbeatMonitor.notify_pong(monitor, ts)
    end

    status = HeartbeatMonitor.get_status(monitor)
    assert status.answered >= 4
    assert status.missed == 0
    refute_received {:worker_exit, _}
  end

  test "dependent: missed heartbeats take the worker down with :heartbeat_timeout" do
    Process.flag(:trap_exit, true)
    w = worker()
    monitor = start(worker_pid: w, ping_fun: fn _ -> :ok end, dependent: true)
    ref = Process.monitor(monitor)
    assert_receive {:worker_exit, :heartbeat_timeout}, 1_000
    assert_receive {:DOWN, ^ref, :process, _, :normal}, 1_000
  end

  test "an error from the ping function counts as a miss" do
    Process.flag(:trap_exit, true)
    start(worker_pid: worker(), ping_fun: fn _ -> {:error, :unreachable} end, timeout_ms: 60_000)
    assert_receive {:worker_exit, :heartbeat_timeout}, 1_000
  end

  test "replies to reference pings, as the native core sends them, are pongs" do
    parent = self()

    # The test answers each ping itself: a generous timeout, so a slow
    # reply on a loaded machine is not a miss (misses come from the errors).
    monitor =
      start(
        worker_pid: worker(),
        timeout_ms: 5_000,
        ping_fun: fn _ ->
          ref = make_ref()
          send(parent, {:ref_ping, self(), ref})
          {:ok, ref}
        end
      )

    for _ <- 1..4 do
      assert_receive {:ref_ping, ^monitor, ref}, 1_000
      send(monitor, {ref, {:ok, 123}})
    end

    assert HeartbeatMonitor.get_status(monitor).missed == 0
    refute_received {:worker_exit, _}

    # An error reply is a miss; two in a row take the worker down.
    for _ <- 1..2 do
      assert_receive {:ref_ping, ^monitor, ref}, 1_000
      send(monitor, {ref, {:error, :unavailable}})
    end

    assert_receive {:worker_exit, :heartbeat_timeout}, 1_000
  end

  test "independent: misses are reported, the worker is kept" do
    handler = "hb-test-#{System.unique_integer()}"
    parent = self()

    Snakepit.Telemetry.attach(
      handler,
      [:snakepit, :heartbeat, :timeout],
      fn _, m, meta, _ ->
        send(parent, {:hb_timeout, m, meta})
      end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(handler) end)

    monitor =
      start(worker_pid: worker(), ping_fun: fn _ -> :ok end, dependent: false, worker_id: "ind")

    assert_receive {:hb_timeout, %{missed: 2}, %{worker_id: "ind", dependent: false}}, 1_000
    assert_receive {:hb_timeout, _, %{worker_id: "ind"}}, 1_000
    assert Process.alive?(monitor)
    refute_received {:worker_exit, _}
  end
end
