defmodule Snakepit.Pool.ProcessRegistryTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Pool.ProcessRegistry
  alias Snakepit.Test.AppPool

  test "workers are recorded with their OS pid and forgotten when they stop" do
    :ok = AppPool.start!(pool_size: 2)
    :ok = Snakepit.Pool.await_init_complete()
    pids = AppPool.worker_os_pids()
    # The workers and the fork server they were forked from.
    assert Enum.sort(ProcessRegistry.get_active_process_pids()) ==
             Enum.sort(pids ++ Snakepit.ForkServer.os_pids())

    {:ok, info} = ProcessRegistry.get_worker_info("default_worker_1")
    assert info.status == :active
    assert info.beam_run_id == Snakepit.RunID.current()
    assert info.process_pid in pids

    :ok = Snakepit.Pool.WorkerSupervisor.stop_worker_by_id("default_worker_1")
    refute ProcessRegistry.worker_registered?("default_worker_1")
  end

  test "a corrupt registry file of an earlier run is logged, moved aside, and boot continues" do
    dir = ProcessRegistry.instance_dir()
    File.mkdir_p!(dir)
    corrupt = Path.join(dir, "zzzzzzz.dets")
    on_exit(fn -> Enum.each(Path.wildcard(corrupt <> ".corrupt-*"), &File.rm/1) end)
    File.write!(corrupt, :crypto.strong_rand_bytes(4096))

    log =
      ExUnit.CaptureLog.capture_log(fn ->
        :ok = AppPool.start!(pool_size: 1)
      end)

    assert log =~ "unreadable"
    refute File.exists?(corrupt)
    assert [_aside] = Path.wildcard(corrupt <> ".corrupt-*")
    assert {:ok, _} = Snakepit.execute("ping", %{})
  end

  test "a reserved-only record (crash between reserve and spawn) is cleaned at boot" do
    # Another run's file with a record that never got its pid.
    dir = ProcessRegistry.instance_dir()
    File.mkdir_p!(dir)
    old_run = Snakepit.RunID.generate()
    path = Path.join(dir, "#{old_run}.dets")
    {:ok, t} = :dets.open_file(:registry_test_file, file: String.to_charlist(path), type: :set)

    :ok =
      :dets.insert(
        t,
        {"w1",
         %{status: :reserved, beam_run_id: old_run, beam_os_pid: 4_000_000, process_pid: nil}}
      )

    :ok = :dets.close(t)

    :ok = AppPool.start!(pool_size: 1)
    refute File.exists?(path)
  end
end
