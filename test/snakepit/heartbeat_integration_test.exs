defmodule Snakepit.HeartbeatIntegrationTest do
  # Real Python workers and heartbeats in both directions.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.AppPool

  @sigstop 19
  @sigcont 18
  @fast %{ping_interval_ms: 100, timeout_ms: 200, max_missed_heartbeats: 2}

  defp start(heartbeat) do
    AppPool.start!(
      pools: [%{name: :default, pool_size: 1, heartbeat: Map.merge(@fast, heartbeat)}]
    )

    [id] = Snakepit.list_workers()
    {:ok, {worker, meta}} = Snakepit.Pool.Registry.fetch_worker(id)
    {worker, meta.os_pid}
  end

  test "dependent: a Python process that stops answering is killed and replaced" do
    {worker, os_pid} = start(%{dependent: true})
    ref = Process.monitor(worker)
    :ok = Snakepit.Native.signal_process(os_pid, @sigstop)
    assert_receive {:DOWN, ^ref, :process, ^worker, {:shutdown, :heartbeat_timeout}}, 5_000
    refute Snakepit.Native.process_alive(os_pid)

    assert AppPool.wait_until(fn -> Snakepit.list_workers() != [] end, 10_000) != :timeout
    assert {:ok, %{"pid" => new}} = Snakepit.execute("get_pid", %{})
    assert new != os_pid
  end

  test "dependent: Python exits by itself when Elixir stops sending heartbeats" do
    {worker, os_pid} = start(%{dependent: true})
    ref = Process.monitor(worker)
    # Freeze the Elixir side of the heartbeat: no more pings reach Python.
    :ok = :sys.suspend(:sys.get_state(worker).heartbeat_monitor)

    assert_receive {:DOWN, ^ref, :process, ^worker, {:shutdown, {:python_exited, {:exited, 3}}}},
                   5_000

    refute Snakepit.Native.process_alive(os_pid)
  end

  test "independent: missed heartbeats are reported and the worker is kept" do
    {worker, os_pid} = start(%{dependent: false})
    parent = self()
    handler = "hb-int-#{System.unique_integer()}"

    Snakepit.Telemetry.attach(
      handler,
      [:snakepit, :heartbeat, :timeout],
      fn _, _, meta, _ ->
        send(parent, {:heartbeat_timeout, meta})
      end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(handler) end)
    ref = Process.monitor(worker)
    :ok = Snakepit.Native.signal_process(os_pid, @sigstop)
    assert_receive {:heartbeat_timeout, %{dependent: false}}, 5_000
    assert Process.alive?(worker)
    refute_received {:DOWN, ^ref, _, _, _}
    :ok = Snakepit.Native.signal_process(os_pid, @sigcont)
    assert {:ok, %{"pid" => ^os_pid}} = Snakepit.execute("get_pid", %{})
  end
end
