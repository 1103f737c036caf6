defmodule Snakepit.ProcessKillerTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Native, ProcessKiller}

  defp own_pid, do: String.to_integer(System.pid())

  test "dangerous or malformed targets are refused and nothing is sent" do
    {:ok, own_group} = ProcessKiller.get_process_group_id(own_pid())

    for bad <- [0, 1, -1, -42, own_pid(), "123", nil, 1.5] do
      assert {:error, :invalid_target} = ProcessKiller.kill_process(bad, :sigkill)
      assert {:error, :invalid_target} = ProcessKiller.kill_process_group(bad, :sigkill)
    end

    assert {:error, :invalid_target} = ProcessKiller.kill_process_group(own_group, :sigterm)
    assert {:error, :invalid_target} = ProcessKiller.kill_with_escalation(1, 10)
    assert {:error, :invalid_target} = ProcessKiller.kill_process_group_with_escalation(0, 10)
    # We are still here.
    assert ProcessKiller.process_alive?(own_pid())
  end

  test "unknown signals are refused" do
    assert {:error, {:unknown_signal, :sigfoo}} = ProcessKiller.kill_process(99_999, :sigfoo)
  end

  test "a missing process is :not_found, not a crash" do
    assert {:error, :not_found} = ProcessKiller.kill_process(4_000_000, :sigterm)
    refute ProcessKiller.process_alive?(4_000_000)
    assert {:error, :not_found} = ProcessKiller.get_process_command(4_000_000)
  end

  test "escalation kills a process that ignores SIGTERM" do
    {:ok, {pid, handle}} =
      Native.spawn_process(
        "/bin/sh",
        ["/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"],
        [{"PATH", "/bin:/usr/bin"}],
        nil,
        self()
      )

    on_exit(fn -> Native.release_process(handle) end)
    # SIGTERM before the trap is set would kill it: wait until it is.
    assert_receive {:snakepit_process, ^pid, {:stdout, "ready"}}, 5_000
    assert {:ok, cmd} = ProcessKiller.get_process_command(pid)

    assert cmd =~ "trap"
    assert {:ok, ^pid} = ProcessKiller.get_process_group_id(pid)
    assert :ok = ProcessKiller.kill_process_group_with_escalation(pid, 200)
    assert_receive {:snakepit_process, ^pid, {:exit, {:signaled, 9}}}, 2_000
  end

  test "kill_by_run_id touches only processes carrying that run id" do
    run_id = Snakepit.RunID.generate()
    path = [{"PATH", "/bin:/usr/bin"}]

    # The marker rides on sh's own command line (its $0 and $1.. after -c).
    {:ok, {marked, h1}} =
      Native.spawn_process(
        "/bin/sh",
        ["/bin/sh", "-c", "sleep 30; :", "sh", "--snakepit-run-id", run_id],
        path,
        nil,
        self()
      )

    {:ok, {unmarked, h2}} =
      Native.spawn_process("/bin/sleep", ["/bin/sleep", "30"], path, nil, self())

    on_exit(fn -> Enum.each([h1, h2], &Native.release_process/1) end)

    assert {:ok, [^marked]} = ProcessKiller.kill_by_run_id(run_id, timeout_ms: 500)
    assert_receive {:snakepit_process, ^marked, {:exit, _}}, 2_000
    assert ProcessKiller.process_alive?(unmarked)
    assert {:error, :invalid_run_id} = ProcessKiller.kill_by_run_id("../etc")
  end

  @tag :python
  test "find_python_processes sees a Python process" do
    {:ok, python} = Snakepit.PythonRuntime.executable()

    {:ok, {pid, handle}} =
      Native.spawn_process(
        python,
        [python, "-c", "import time; time.sleep(30)"],
        [],
        nil,
        self()
      )

    on_exit(fn -> Native.release_process(handle) end)
    assert pid in ProcessKiller.find_python_processes()
  end

  test "setsid and process groups" do
    assert ProcessKiller.process_group_supported?()
    assert {:ok, path} = ProcessKiller.setsid_executable()
    assert File.exists?(path)
  end
end
