defmodule Snakepit.ForkServerTest do
  # Workers forked from a warm fork server, with real Python processes: who
  # their parent is, that they are isolated like spawned workers, and what
  # happens when the fork server itself dies.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 120_000

  alias Snakepit.{ProcessKiller, RunID}

  alias Snakepit.Worker.ForkServer
  alias Snakepit.Test.AppPool

  @pool 3

  defp stat(os_pid) do
    [_, rest] = File.read!("/proc/#{os_pid}/stat") |> String.split(") ", parts: 2)
    [_state, ppid, _pgrp, session | _] = String.split(rest)
    %{ppid: String.to_integer(ppid), session: String.to_integer(session)}
  end

  defp start_pool!(env) do
    :ok =
      AppPool.start!(
        [
          pool_size: @pool,
          adapter_args: AppPool.fixture_adapter(),
          python_path: [AppPool.fixtures_dir()]
        ] ++
          env
      )

    AppPool.worker_os_pids()
  end

  test "workers are forked by one fork server, each in its own session, carrying the run id" do
    workers = start_pool!(adapter_env: [{"FORK_TEST_VAR", "forked-env"}])
    assert [server] = ForkServer.os_pids()
    assert length(workers) == @pool

    for pid <- workers do
      assert %{ppid: ^server, session: ^pid} = stat(pid)
    end

    assert Enum.sort(ProcessKiller.find_by_run_id(RunID.current())) ==
             Enum.sort([server | workers])

    # Each worker really serves, with the pool's environment.
    for _ <- 1..@pool do
      assert {:ok, %{"value" => "forked-env"}} =
               Snakepit.execute("getenv", %{name: "FORK_TEST_VAR"})
    end
  end

  test "when the fork server dies its workers die with it and are replaced from a new one" do
    workers = start_pool!([])
    [server] = ForkServer.os_pids()

    :ok = ProcessKiller.kill_process(server, :sigkill)

    assert AppPool.await_workers(@pool, without: workers, timeout: 30_000) != :timeout
    assert Enum.filter(workers ++ [server], &ProcessKiller.process_alive?/1) == []
    assert [new_server] = ForkServer.os_pids()
    assert new_server != server

    for pid <- AppPool.worker_os_pids(), do: assert(stat(pid).ppid == new_server)
    assert {:ok, %{"pid" => _}} = Snakepit.execute("get_pid", %{})
  end

  test "with fork_server: false each worker is spawned by the VM itself" do
    workers = start_pool!(fork_server: false)
    beam = String.to_integer(System.pid())

    assert ForkServer.os_pids() == []
    for pid <- workers, do: assert(%{ppid: ^beam, session: ^pid} = stat(pid))
  end

  test "stopping the application leaves neither workers nor fork server behind" do
    workers = start_pool!([])
    [server] = ForkServer.os_pids()

    Application.stop(:snakepit)

    # The fork server's guard kills it once its handle is released.
    assert AppPool.wait_until(
             fn ->
               Enum.filter([server | workers], &ProcessKiller.process_alive?/1) == [] and
                 ProcessKiller.find_by_run_id(RunID.current()) == []
             end,
             30_000
           ) != :timeout
  end
end
