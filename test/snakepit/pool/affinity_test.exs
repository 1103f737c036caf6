defmodule Snakepit.Pool.AffinityTest do
  # Real Python workers: session affinity modes, pool-level and per call. A
  # busy worker is held by a gate (a file the test creates), not a duration.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Bridge.SessionStore
  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{name: :hint, pool_size: 2, adapter_args: AppPool.fixture_adapter()},
        %{
          name: :strict,
          pool_size: 2,
          affinity: :strict_queue,
          adapter_args: AppPool.fixture_adapter()
        },
        %{
          name: :fail_fast,
          pool_size: 2,
          affinity: :strict_fail_fast,
          adapter_args: AppPool.fixture_adapter()
        }
      ]
    )
  end

  setup do
    # Killing a worker in one test must not leave the next with one.
    for pool <- [:hint, :strict, :fail_fast] do
      assert AppPool.wait_until(fn -> length(Snakepit.list_workers(pool)) == 2 end, 10_000) !=
               :timeout
    end

    %{session: "s-#{System.unique_integer([:positive])}"}
  end

  defp pid_in(session, pool, opts \\ []) do
    case Snakepit.execute_in_session(session, "get_pid", %{}, [pool: pool] ++ opts) do
      {:ok, %{"pid" => pid}} -> pid
      other -> other
    end
  end

  # Keeps the session's worker busy until `release/1` opens the gate.
  defp occupy(session, pool, dir) do
    gate = Path.join(dir, "gate-#{System.unique_integer([:positive])}")
    on_exit(fn -> File.touch(gate) end)

    task =
      Task.async(fn ->
        Snakepit.execute_in_session(session, "hold", %{path: gate}, pool: pool, timeout: 60_000)
      end)

    assert AppPool.wait_until(fn -> Snakepit.get_stats(pool).busy == 1 end, 10_000) != :timeout
    {task, gate}
  end

  defp release({_task, gate}), do: File.touch!(gate)
  defp finished({task, _gate}), do: Task.await(task, 30_000)
  defp holding?({task, _gate}), do: Task.yield(task, 0) == nil

  defp queued(pool, n),
    do: AppPool.wait_until(fn -> Snakepit.get_stats(pool).queued == n end, 10_000) != :timeout

  defp worker_id_of(os_pid) do
    Enum.find_value(Snakepit.Pool.Registry.list_workers(), fn id ->
      {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
      if meta.os_pid == os_pid, do: id
    end)
  end

  defp kill(os_pid) do
    {:ok, {worker, _}} = Snakepit.Pool.Registry.fetch_worker(worker_id_of(os_pid))
    ref = Process.monitor(worker)
    :ok = Snakepit.Native.signal_process(os_pid, 9)
    assert_receive {:DOWN, ^ref, :process, _, _}, 5_000
    # Our :DOWN may come before the pool's; wait until the pool knows.
    in_pool? = fn ->
      :sys.get_state(Snakepit.Pool).pools
      |> Map.values()
      |> Enum.any?(fn pool -> Enum.any?(pool.workers, fn {_, w} -> w.pid == worker end) end)
    end

    assert AppPool.wait_until(fn -> not in_pool?.() end, 5_000) != :timeout
  end

  test "the session store records the session's last worker", %{session: s} do
    pid = pid_in(s, :hint)
    # The pool records it with a cast sent before its reply to us, so a call
    # to the store (unlike a direct ETS read) is answered after it.
    assert {:ok, %{last_worker_id: id}} = SessionStore.get_session(s)
    assert id == worker_id_of(pid)
    assert SessionStore.last_worker(s) == id
    assert pid_in(s, :hint) == pid
  end

  test ":hint falls back to another worker while the session's is busy", %{
    session: s,
    tmp_dir: dir
  } do
    pid = pid_in(s, :hint)
    busy = occupy(s, :hint, dir)
    other = pid_in(s, :hint)
    assert is_integer(other) and other != pid
    assert holding?(busy)
    release(busy)
    assert {:ok, %{"pid" => ^pid}} = finished(busy)
  end

  test ":strict_queue waits for the session's worker", %{session: s, tmp_dir: dir} do
    pid = pid_in(s, :strict)
    busy = occupy(s, :strict, dir)
    waiting = Task.async(fn -> pid_in(s, :strict) end)
    # The other worker is free, yet the call waits ...
    assert queued(:strict, 1)
    assert Snakepit.get_stats(:strict).available == 1
    assert Task.yield(waiting, 0) == nil
    # ... and runs on the session's once it is done.
    release(busy)
    assert {:ok, %{"pid" => ^pid}} = finished(busy)
    assert Task.await(waiting, 30_000) == pid
  end

  test "affinity per call: :strict_fail_fast fails at once when the worker is busy", %{
    session: s,
    tmp_dir: dir
  } do
    pid = pid_in(s, :hint)
    busy = occupy(s, :hint, dir)

    assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
             Snakepit.execute_in_session(s, "get_pid", %{},
               pool: :hint,
               affinity: :strict_fail_fast
             )

    assert holding?(busy)

    # And per call :strict_queue on a :hint pool waits for it.
    waiting = Task.async(fn -> pid_in(s, :hint, affinity: :strict_queue) end)
    assert queued(:hint, 1)
    release(busy)
    assert {:ok, %{"pid" => ^pid}} = finished(busy)
    assert Task.await(waiting, 30_000) == pid
  end

  test "pool-level :strict_fail_fast: busy worker fails at once, a dead one once", %{
    session: s,
    tmp_dir: dir
  } do
    pid = pid_in(s, :fail_fast)
    busy = occupy(s, :fail_fast, dir)

    # No affinity option: the pool's own mode answers.
    assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
             Snakepit.execute_in_session(s, "get_pid", %{}, pool: :fail_fast)

    # The pool was not full: a call without a session is served elsewhere.
    assert {:ok, %{"pid" => other}} = Snakepit.execute("get_pid", %{}, pool: :fail_fast)
    assert other != pid
    assert holding?(busy)
    release(busy)
    assert {:ok, %{"pid" => ^pid}} = finished(busy)
    # Still pinned once the worker is free again.
    assert pid_in(s, :fail_fast) == pid

    kill(pid)

    assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
             Snakepit.execute_in_session(s, "get_pid", %{}, pool: :fail_fast)

    new = pid_in(s, :fail_fast)
    assert is_integer(new) and new != pid
    assert pid_in(s, :fail_fast) == new
  end

  test "a dead worker under :hint: the session just moves on", %{session: s} do
    pid = pid_in(s, :hint)
    kill(pid)
    new = pid_in(s, :hint)
    assert is_integer(new) and new != pid
    assert pid_in(s, :hint) == new
  end

  test "a dead worker under strict affinity: one clear error, then a new worker", %{session: s} do
    pid = pid_in(s, :strict)
    kill(pid)

    assert {:error, %Error{category: :pool, details: %{reason: :session_worker_unavailable}}} =
             Snakepit.execute_in_session(s, "get_pid", %{}, pool: :strict)

    new = pid_in(s, :strict)
    assert is_integer(new) and new != pid
  end

  test "a strict request queued for a worker that dies is answered at once", %{
    session: s,
    tmp_dir: dir
  } do
    pid = pid_in(s, :strict)
    # The gate stays closed: the worker dies holding the call.
    {busy, _gate} = occupy(s, :strict, dir)

    waiting =
      Task.async(fn -> Snakepit.execute_in_session(s, "get_pid", %{}, pool: :strict) end)

    assert queued(:strict, 1)
    kill(pid)

    assert {:error, %Error{details: %{reason: :session_worker_unavailable}}} =
             Task.await(waiting)

    assert {:error, %Error{}} = Task.await(busy)
  end
end
