defmodule Snakepit.Pool.AffinityTest do
  # Real Python workers: session affinity modes, pool-level and per call.
  use ExUnit.Case, async: false
  @moduletag :python

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
        }
      ]
    )
  end

  setup do
    # Killing a worker in one test must not leave the next with one.
    for pool <- [:hint, :strict] do
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

  # Keeps the session's worker busy for `ms`.
  defp occupy(session, pool, ms) do
    task =
      Task.async(fn ->
        Snakepit.execute_in_session(session, "interval", %{ms: ms}, pool: pool, timeout: 10_000)
      end)

    assert AppPool.wait_until(fn -> Snakepit.get_stats(pool).busy == 1 end, 5_000) != :timeout
    task
  end

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

  test ":hint falls back to another worker while the session's is busy", %{session: s} do
    pid = pid_in(s, :hint)
    busy = occupy(s, :hint, 500)
    other = pid_in(s, :hint)
    assert other != pid
    assert {:ok, %{"pid" => ^pid}} = Task.await(busy)
  end

  test ":strict_queue waits for the session's worker", %{session: s} do
    pid = pid_in(s, :strict)
    busy = occupy(s, :strict, 400)
    # The other worker is free, yet the call waits and runs on the session's.
    assert pid_in(s, :strict) == pid
    assert {:ok, %{"pid" => ^pid}} = Task.await(busy)
  end

  test "affinity per call: :strict_fail_fast fails at once when the worker is busy", %{session: s} do
    pid = pid_in(s, :hint)
    busy = occupy(s, :hint, 500)

    assert {:error, %Error{category: :pool, details: %{reason: :worker_busy}}} =
             Snakepit.execute_in_session(s, "get_pid", %{},
               pool: :hint,
               affinity: :strict_fail_fast
             )

    # And per call :strict_queue on a :hint pool waits for it.
    assert pid_in(s, :hint, affinity: :strict_queue) == pid
    Task.await(busy)
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

  test "a strict request queued for a worker that dies is answered at once", %{session: s} do
    pid = pid_in(s, :strict)
    busy = occupy(s, :strict, 5_000)

    waiting =
      Task.async(fn -> Snakepit.execute_in_session(s, "get_pid", %{}, pool: :strict) end)

    assert AppPool.wait_until(fn -> Snakepit.get_stats(:strict).queued == 1 end, 5_000) !=
             :timeout

    kill(pid)

    assert {:error, %Error{details: %{reason: :session_worker_unavailable}}} =
             Task.await(waiting)

    assert {:error, %Error{}} = Task.await(busy)
  end
end
