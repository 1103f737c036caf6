defmodule Snakepit.CancellationTest do
  # Real Python workers: a call whose caller gives up is stopped in Python,
  # and a worker never runs more calls than its capacity meanwhile.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  @grace_ms 500

  setup_all do
    Application.put_env(:snakepit, :cancel_grace_ms, @grace_ms)
    on_exit(fn -> Application.delete_env(:snakepit, :cancel_grace_ms) end)

    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [%{name: :default, pool_size: 1, adapter_args: AppPool.fixture_adapter()}]
    )
  end

  setup do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      Snakepit.Telemetry.attach(
        id,
        [:snakepit, :request, :stopped],
        fn _, _, meta, _ -> send(test, {:stopped, meta.stop}) end,
        nil
      )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
    {:ok, pid} = worker_pid()
    %{pid: pid}
  end

  defp worker_pid do
    with {:ok, %{"pid" => pid}} <- Snakepit.execute("get_pid", %{}), do: {:ok, pid}
  end

  defp marks(path) do
    case File.read(path) do
      {:ok, text} -> String.split(text, "\n", trim: true)
      {:error, :enoent} -> []
    end
  end

  defp await_mark(path, mark),
    do: assert(AppPool.wait_until(fn -> mark in marks(path) end, 10_000) != :timeout)

  test "a sync tool past its deadline is stopped in its thread; the worker stays",
       %{tmp_dir: dir, pid: pid} do
    path = Path.join(dir, "busy")

    assert {:error, %Error{category: :timeout, details: %{stop: :interrupted}} = error} =
             Snakepit.execute("busy", %{path: path}, timeout: 400)

    assert error.message =~ "CallCancelled"
    assert marks(path) == ["start", "stopped"]
    assert {:ok, ^pid} = worker_pid()
  end

  test "an async tool past its deadline is cancelled", %{tmp_dir: dir, pid: pid} do
    path = Path.join(dir, "async")

    assert {:error, %Error{category: :timeout, details: %{stop: :cancelled}}} =
             Snakepit.execute("busy_async", %{path: path}, timeout: 400)

    assert marks(path) == ["start", "cancelled"]
    assert {:ok, ^pid} = worker_pid()
  end

  test "a tool that ignores the stop is killed after the grace; the next call waits for that",
       %{tmp_dir: dir, pid: pid} do
    path = Path.join(dir, "c")

    assert {:error, %Error{category: :timeout, details: %{stop: :running}} = error} =
             Snakepit.execute("sleep_in_c", %{path: path, seconds: 60}, timeout: 400)

    assert error.message =~ "killed and replaced"
    # The only slot is still taken by the running call: this one waits
    # until the hard stop replaced the worker, and never runs beside it.
    assert {:ok, new_pid} = worker_pid()
    assert new_pid != pid
    assert_received {:stopped, :hard_stop}
    refute Snakepit.ProcessKiller.process_alive?(pid)
    assert marks(path) == ["start"]
  end

  test "a caller that dies mid-call gets its call stopped", %{tmp_dir: dir, pid: pid} do
    path = Path.join(dir, "orphan")
    caller = spawn(fn -> Snakepit.execute("busy", %{path: path}) end)
    await_mark(path, "start")
    Process.exit(caller, :kill)
    assert_receive {:stopped, :interrupted}, 5_000
    assert marks(path) == ["start", "stopped"]
    assert {:ok, ^pid} = worker_pid()
  end

  test "a halted stream's producer is stopped before its slot is reused",
       %{tmp_dir: dir, pid: pid} do
    path = Path.join(dir, "ticks")
    parent = self()

    assert :ok =
             Snakepit.execute_stream("ticks", %{path: path}, fn chunk ->
               send(parent, {:chunk, chunk["n"]})
               if chunk["n"] >= 2, do: :halt, else: :ok
             end)

    # ticks never ends by itself: the worker reports it stopped, and the
    # producer itself saw the stop (its finally ran in Python).
    assert_receive {:stopped, :interrupted}, 5_000
    assert marks(path) == ["start", "stopped"]
    assert {:ok, ^pid} = worker_pid()
  end

  test "a raising stream callback gives its slot back", %{tmp_dir: dir, pid: pid} do
    path = Path.join(dir, "raise")

    assert_raise RuntimeError, "stop here", fn ->
      Snakepit.execute_stream("ticks", %{path: path}, fn _ -> raise "stop here" end)
    end

    assert_receive {:stopped, _}, 5_000
    assert {:ok, ^pid} = worker_pid()
    assert Snakepit.get_stats().busy == 0
  end
end
