defmodule Snakepit.StartupFailureTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  defp await_failure(env) do
    :ok = AppPool.restart(env)
    Snakepit.Pool.await_ready(Snakepit.Pool, 30_000)
  end

  # Processes of this run, the fork server aside: it does not start
  # adapters, stays for the next start and goes with the application
  # (fork_server_test.exs).
  defp our_python_processes,
    do:
      Snakepit.ProcessKiller.find_by_run_id(Snakepit.RunID.current()) --
        Snakepit.ForkServer.os_pids()

  test "a missing adapter module fails await_ready with the cause and the worker's output" do
    assert {:error, %Error{category: :pool} = error} =
             await_failure(pool_size: 2, adapter_args: ["--adapter", "no_such_module.Nope"])

    assert error.message =~ "no_such_module"
    assert error.details.cause.category == :worker
    assert error.details.cause.details.output != []

    assert {:error, %Error{category: :pool, details: %{reason: :pool_failed}}} =
             Snakepit.execute("ping", %{})

    assert our_python_processes() == []
  end

  test "a missing Python interpreter is named in the error" do
    Application.put_env(:snakepit, :python_executable, "/nonexistent/python3")
    on_exit(fn -> Application.delete_env(:snakepit, :python_executable) end)

    assert {:error, %Error{} = error} = await_failure(pool_size: 1)
    assert error.message =~ "/nonexistent/python3"
    assert our_python_processes() == []
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
    assert our_python_processes() == []
  end

  defp python_path, do: Enum.join(Snakepit.PythonRuntime.python_path(), ":")
end
