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
             Enum.sort(pids ++ Snakepit.Worker.ForkServer.os_pids())

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

  test "a file a VM left mid-write is not repaired: its run's processes are found by run id" do
    dir = ProcessRegistry.instance_dir()
    File.mkdir_p!(dir)
    old_run = Snakepit.RunID.generate()
    path = Path.join(dir, "#{old_run}-4000001.dets")
    {:ok, t} = :dets.open_file(:registry_test_dirty, file: String.to_charlist(path), type: :set)
    :ok = :dets.insert(t, {"w1", %{status: :active, beam_run_id: old_run, process_pid: 1}})
    :ok = :dets.close(t)
    # What a kill between a write and its sync leaves: the header's
    # "closed properly" word (bytes 8..11 of a DETS v9 file) still 0.
    {:ok, fd} = :file.open(String.to_charlist(path), [:read, :write, :binary, :raw])
    :ok = :file.pwrite(fd, 8, <<0::32>>)
    :ok = :file.close(fd)

    assert {:error, {:needs_repair, _}} =
             :dets.open_file(:registry_test_dirty, file: String.to_charlist(path), repair: false)

    # A process of that run, in its own process group like a worker.
    _port =
      Port.open({:spawn_executable, System.find_executable("setsid")}, [
        :binary,
        args: [
          # The interpreter itself (a python3 on PATH may be a wrapper
          # script that shows the same arguments in a second process).
          elem(Snakepit.PythonRuntime.executable(), 1),
          "-c",
          "import time; time.sleep(60)",
          "--snakepit-run-id",
          old_run
        ]
      ])

    assert AppPool.wait_until(
             fn -> Snakepit.ProcessKiller.find_by_run_id(old_run) != [] end,
             5_000
           ) !=
             :timeout

    [orphan] = Snakepit.ProcessKiller.find_by_run_id(old_run)

    log =
      ExUnit.CaptureLog.capture_log([level: :info], fn ->
        # DETS prints a repair to the console (the :user device), not to Logger.
        console = ExUnit.CaptureIO.capture_io(:user, fn -> :ok = AppPool.start!(pool_size: 1) end)
        refute console =~ "repair"
      end)

    assert log =~ "was not saved as closed"
    refute log =~ "unreadable"
    refute File.exists?(path)

    assert AppPool.wait_until(fn -> not Snakepit.ProcessKiller.process_alive?(orphan) end, 5_000) !=
             :timeout
  end

  test "this VM's own file is saved as closed from the start, before any write" do
    # (A new DETS file is "not properly closed" until its first save, and a
    # VM killed then would leave one the next boot must repair.)
    on_exit(fn -> {:ok, _} = Application.ensure_all_started(:snakepit) end)
    Application.stop(:snakepit)

    own =
      Path.join(
        ProcessRegistry.instance_dir(),
        "#{Snakepit.RunID.current()}-#{System.pid()}.dets"
      )

    File.rm(own)
    # Pooling is off in the test config: no worker, no write.
    {:ok, _} = Application.ensure_all_started(:snakepit)
    assert ProcessRegistry.dets_table_size() == 0
    {:ok, <<_::binary-size(8), closed::32, _::binary>>} = File.read(own)
    assert closed == 1
  end
end
