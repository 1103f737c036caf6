defmodule Snakepit.StartupFailureTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  defp await_failure(env) do
    :ok = AppPool.restart(env)
    result = Snakepit.Pool.await_ready(Snakepit.Pool, 30_000)
    test = self()

    :ok =
      Snakepit.Telemetry.attach(
        {__MODULE__, make_ref()},
        [:snakepit, :worker, :restart_scheduled],
        fn _, m, _meta, _ -> send(test, {:restart, m.failures}) end,
        nil
      )

    result
  end

  # A failing slot is retried for as long as the pool lives, with backoff;
  # what must never happen is that failed attempts leave processes behind.
  # After a few retries at most one process per slot exists, and none once
  # Snakepit stops.
  defp assert_nothing_left_behind(pool_size) do
    assert_receive {:restart, n} when n >= 3, 10_000
    assert length(our_python_processes()) <= pool_size
    :ok = Application.stop(:snakepit)
    assert our_python_processes() == []
  end

  # Processes of this run, the fork server aside: it does not start
  # adapters, stays for the next start and goes with the application
  # (fork_server_test.exs).
  defp our_python_processes,
    do:
      Snakepit.ProcessKiller.find_by_run_id(Snakepit.RunID.current()) --
        Snakepit.Worker.ForkServer.os_pids()

  test "a missing adapter module fails await_ready with the cause and the worker's output" do
    assert {:error, %Error{category: :pool} = error} =
             await_failure(pool_size: 2, adapter_args: ["--adapter", "no_such_module.Nope"])

    assert error.message =~ "no_such_module"
    assert error.details.cause.category == :worker
    assert error.details.cause.details.output != []

    assert {:error, %Error{category: :pool, details: %{reason: :pool_failed}}} =
             Snakepit.execute("ping", %{})

    assert_nothing_left_behind(2)
  end

  test "a missing Python interpreter is named in the error" do
    Application.put_env(:snakepit, :python_executable, "/nonexistent/python3")
    on_exit(fn -> Application.delete_env(:snakepit, :python_executable) end)

    assert {:error, %Error{} = error} = await_failure(pool_size: 1)
    assert error.message =~ "/nonexistent/python3"
    assert_nothing_left_behind(1)
  end

  test "an adapter whose initialize raises fails with its exception" do
    assert {:error, %Error{} = error} =
             await_failure(
               pool_size: 1,
               adapter_args: ["--adapter", "failing_adapter.FailingAdapter"],
               adapter_env: [
                 {"PYTHONPATH",
                  Path.expand("../fixtures/python", __DIR__) <> ":" <> python_path()}
               ]
             )

    assert error.message =~ "initialize exploded"
    assert_nothing_left_behind(1)
  end

  defp python_path, do: Enum.join(Snakepit.PythonRuntime.python_path(), ":")
end
