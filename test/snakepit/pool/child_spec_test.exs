defmodule Snakepit.Pool.ChildSpecTest do
  # Pools in a host's own supervision tree, as a Phoenix app's
  # application.ex or a user's test would put them, with real workers.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.AppPool

  defp pool_spec(name, size),
    do:
      {Snakepit.Pool,
       name: name, pool_size: size, adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")}

  defp os_pids(pool) do
    for id <- Snakepit.Pool.list_workers(pool),
        {_pid, meta} <- Registry.lookup(Snakepit.Pool.Registry, id),
        do: meta.os_pid
  end

  defp gone?(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} -> stat |> String.split(") ") |> List.last() |> String.starts_with?("Z")
      {:error, _} -> true
    end
  end

  describe "with pooling_enabled: false" do
    setup do
      AppPool.restart(pooling_enabled: false, python_path: [AppPool.fixtures_dir()])
      :ok
    end

    test "start_supervised! runs a pool every key of which is honoured; stopping it stops its workers" do
      start_supervised!(pool_spec(:ml, 2))
      assert :ok = Snakepit.Pool.await_init_complete(:ml, 30_000)
      assert length(Snakepit.Pool.list_workers(:ml)) == 2

      assert {:ok, %{"result" => 5}} = Snakepit.execute("add", %{a: 2, b: 3}, pool: :ml)
      # The only pool: calls without pool: reach it too.
      assert {:ok, %{"result" => 7}} = Snakepit.execute("add", %{a: 3, b: 4})
      assert Snakepit.get_stats(:ml).workers == 2

      pids = os_pids(:ml)
      assert length(pids) == 2
      :ok = stop_supervised({Snakepit.Pool, :ml})

      for pid <- pids do
        assert AppPool.wait_until(fn -> gone?(pid) end, 10_000) != :timeout,
               "worker #{pid} outlived its pool"
      end

      assert {:error, %Snakepit.Error{category: :pool}} =
               Snakepit.execute("add", %{a: 1, b: 1}, pool: :ml)
    end

    test "pools in different trees are independent" do
      {:ok, tree_a} = Supervisor.start_link([pool_spec(:a, 1)], strategy: :one_for_one)
      {:ok, tree_b} = Supervisor.start_link([pool_spec(:b, 1)], strategy: :one_for_one)
      assert :ok = Snakepit.Pool.await_ready(:a, 30_000)
      assert :ok = Snakepit.Pool.await_ready(:b, 30_000)

      [pid_b] = os_pids(:b)
      Process.unlink(tree_a)
      ref = Process.monitor(tree_a)
      Supervisor.stop(tree_a)
      assert_receive {:DOWN, ^ref, :process, ^tree_a, _}

      assert {:ok, %{"result" => 2}} = Snakepit.execute("add", %{a: 1, b: 1}, pool: :b)
      assert os_pids(:b) == [pid_b]
      Supervisor.stop(tree_b)
    end

    test "a bad option or a taken name fails the start with a clear reason" do
      assert {:error, {{:invalid_pool_config, message}, _}} =
               start_supervised({Snakepit.Pool, name: :bad, pool_size: -1})

      assert message =~ "pool_size"

      start_supervised!(pool_spec(:taken, 1))

      assert {:error, {{:name_taken, msg}, _}} =
               start_supervised(pool_spec(:taken, 1), id: :again)

      assert msg =~ ":taken is already running"
    end
  end

  test "beside the configured pools" do
    AppPool.start!(
      pool_size: 1,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
    )

    start_supervised!(pool_spec(:side, 1))
    assert :ok = Snakepit.Pool.await_ready(:side, 30_000)
    assert {:ok, %{"pid" => here}} = Snakepit.execute("get_pid", %{})
    assert {:ok, %{"pid" => side}} = Snakepit.execute("get_pid", %{}, pool: :side)
    assert here != side
  end
end
