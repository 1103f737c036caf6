defmodule Snakepit.GracefulShutdownTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.{GRPCWorker, ProcessKiller}
  alias Snakepit.Pool.WorkerSupervisor
  alias Snakepit.Test.AppPool

  defp fixtures_path,
    do:
      Enum.join(
        [Path.expand("../fixtures/python", __DIR__) | Snakepit.PythonRuntime.python_path()],
        ":"
      )

  test "a worker that ignores SIGTERM is SIGKILLed once the configured grace period is over" do
    default_grace = Snakepit.Defaults.graceful_shutdown_timeout_ms()
    grace = 300
    assert grace * 10 < default_grace
    Application.put_env(:snakepit, :graceful_shutdown_timeout_ms, grace)
    on_exit(fn -> Application.delete_env(:snakepit, :graceful_shutdown_timeout_ms) end)

    :ok =
      AppPool.start!(
        pool_size: 1,
        adapter_args: ["--adapter", "stubborn_adapter.StubbornAdapter"],
        adapter_env: [{"PYTHONPATH", fixtures_path()}]
      )

    [pid] = AppPool.worker_os_pids()
    {stop_us, :ok} = :timer.tc(fn -> Application.stop(:snakepit) end)
    # Only a SIGKILL ends a process that ignores SIGTERM.
    refute ProcessKiller.process_alive?(pid)
    # It was given the grace period first (a lower bound: the stop waited at
    # least that long), and it was the configured one, not the default
    # (an order-of-magnitude bound, not a speed figure).
    assert div(stop_us, 1000) >= grace
    assert div(stop_us, 1000) < default_grace
  end

  @tag :tmp_dir
  test "a well-behaved worker exits through its SIGTERM handling", %{tmp_dir: dir} do
    :ok =
      AppPool.start!(
        pool_size: 1,
        python_path: [AppPool.fixtures_dir()],
        adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
        adapter_env: [{"SNAKEPIT_TEST_CLEANUP_DIR", dir}]
      )

    [pid] = AppPool.worker_os_pids()
    :ok = Application.stop(:snakepit)
    refute ProcessKiller.process_alive?(pid)
    # The server stopped on SIGTERM and ran the adapter's cleanup(), which
    # a SIGKILL after the grace period would have skipped.
    assert File.read!(Path.join(dir, "#{pid}")) == "cleanup\n"
  end

  test "supervisor shutdown time derives from the grace period" do
    Application.put_env(:snakepit, :graceful_shutdown_timeout_ms, 1_234)
    on_exit(fn -> Application.delete_env(:snakepit, :graceful_shutdown_timeout_ms) end)
    # The grace period, 2 s for the SIGKILL and the wait for its exit, 1 s room;
    # the worker's starter waits 1 s more than its worker.
    assert GRPCWorker.supervisor_shutdown_timeout() == 1_234 + 2_000 + 1_000
    assert %{shutdown: 5_234} = Snakepit.Pool.Worker.Starter.child_spec(%{id: "w"})

    Application.put_env(:snakepit, :graceful_shutdown_timeout_ms, 10_000)
    assert GRPCWorker.supervisor_shutdown_timeout() == 13_000
  end

  test "restart_worker gives a worker a fresh Python process" do
    :ok = AppPool.start!(pool_size: 1)
    [old] = AppPool.worker_os_pids()
    assert {:ok, _pid} = WorkerSupervisor.restart_worker("default_worker_1")
    assert AppPool.await_workers(1, without: [old]) != :timeout
    refute ProcessKiller.process_alive?(old)
    assert WorkerSupervisor.worker_count() == 1
    assert [_] = WorkerSupervisor.list_workers()
    assert {:error, :not_found} = WorkerSupervisor.restart_worker("no_such_worker")
  end
end
