defmodule Snakepit.Pool.Worker.StarterRegistryTest do
  # The registry itself (started by the application); real starters are
  # checked with a pool in grpc_worker_api_test.exs.
  use ExUnit.Case, async: true

  alias Snakepit.Pool.Worker.StarterRegistry

  doctest StarterRegistry

  test "a process registered through via_tuple/1 is found, counted and listed" do
    id = "starter-test-#{System.unique_integer([:positive])}"
    refute StarterRegistry.starter_exists?(id)
    assert StarterRegistry.get_starter_pid(id) == {:error, :not_found}
    before = StarterRegistry.starter_count()

    {:ok, pid} = Agent.start_link(fn -> :ok end, name: StarterRegistry.via_tuple(id))

    assert StarterRegistry.starter_exists?(id)
    assert StarterRegistry.get_starter_pid(id) == {:ok, pid}
    assert id in StarterRegistry.list_starters()
    assert StarterRegistry.starter_count() >= before + 1
    assert Snakepit.Pool.Worker.Starter.whereis(id) == pid

    ref = Process.monitor(pid)
    Agent.stop(pid)
    assert_receive {:DOWN, ^ref, _, _, _}
    # The registry drops the name when it sees the process go.
    assert Snakepit.Test.AppPool.wait_until(
             fn -> not StarterRegistry.starter_exists?(id) end,
             1_000
           ) !=
             :timeout
  end

  test "a key that is not a worker id names no starter" do
    refute StarterRegistry.starter_exists?(:nope)
    assert StarterRegistry.get_starter_pid(42) == {:error, :not_found}
  end

  test "its child spec is a unique Registry under its own name" do
    assert %{id: StarterRegistry, start: {Registry, :start_link, [opts]}} =
             StarterRegistry.child_spec([])

    assert opts[:keys] == :unique and opts[:name] == StarterRegistry
  end
end
