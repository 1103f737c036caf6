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

  test "a worker that ignores SIGTERM is SIGKILLed once the grace period is over" do
    Application.put_env(:snakepit, :graceful_shutdown_timeout_ms, 300)
    on_exit(fn -> Application.delete_env(:snakepit, :graceful_shutdown_timeout_ms) end)

    :ok =
      AppPool.start!(
        pool_size: 1,
        adapter_args: ["--adapter", "stubborn_adapter.StubbornAdapter"],
        adapter_env: [{"PYTHONPATH", fixtures_path()}]
      )

    [pid] = AppPool.worker_os_pids()
    {stop_us, :ok} = :timer.tc(fn -> Application.stop(:snakepit) end)
    refute ProcessKiller.process_alive?(pid)
    # It waited for the grace period, then killed: not much longer.
    assert div(stop_us, 1000) >= 300
    assert div(stop_us, 1000) < 3_000
  end

  test "a well-behaved worker exits on SIGTERM well within the grace period" do
    :ok = AppPool.start!(pool_size: 1)
    [pid] = AppPool.worker_os_pids()
    {stop_us, :ok} = :timer.tc(fn -> Application.stop(:snakepit) end)
    refute ProcessKiller.process_alive?(pid)
    assert div(stop_us, 1000) < Snakepit.Defaults.graceful_shutdown_timeout_ms()
  end

  test "supervisor shutdown time derives from the grace period" do
    Application.put_env(:snakepit, :graceful_shutdown_timeout_ms, 1_234)
    on_exit(fn -> Application.delete_env(:snakepit, :graceful_shutdown_timeout_ms) end)
    assert GRPCWorker.supervisor_shutdown_timeout() > 1_234
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
