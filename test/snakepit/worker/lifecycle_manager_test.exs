defmodule Snakepit.Worker.LifecycleManagerTest do
  # Real Python workers being recycled.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Test.AppPool
  alias Snakepit.Worker.LifecycleManager

  doctest LifecycleManager

  defp start(pool, env \\ []) do
    base = %{name: :default, pool_size: 1, adapter_args: AppPool.fixture_adapter()}
    AppPool.start!([python_path: [AppPool.fixtures_dir()], pools: [Map.merge(base, pool)]] ++ env)
    # Handlers live in the application's tables: attach after the restart.
    parent = self()
    handler = "lc-#{System.unique_integer()}"

    Snakepit.Telemetry.attach(
      handler,
      [:snakepit, :worker, :recycled],
      fn _, _, meta, _ -> send(parent, {:recycled, meta}) end,
      nil
    )
  end

  defp pid! do
    {:ok, %{"pid" => pid}} = Snakepit.execute("get_pid", %{})
    pid
  end

  test "worker_max_requests recycles after that many requests; calls never fail meanwhile" do
    start(%{worker_max_requests: 3})
    first = pid!()
    _ = pid!()
    _ = pid!()

    assert_receive {:recycled,
                    %{reason: :max_requests, worker_id: "default_worker_1", request_count: 3}},
                   10_000

    # Capacity never dropped to zero: calls keep working throughout.
    pids = for _ <- 1..3, do: pid!()
    assert List.last(pids) != first
    assert Snakepit.list_workers() == ["default_worker_2"]

    assert AppPool.wait_until(fn -> not Snakepit.Native.process_alive(first) end, 10_000) !=
             :timeout
  end

  test "worker_ttl recycles workers that have been up longer" do
    start(%{worker_ttl: {1, :seconds}}, lifecycle_check_interval: 100)
    first = pid!()
    assert_receive {:recycled, %{reason: :ttl, worker_id: "default_worker_1"}}, 10_000
    assert AppPool.wait_until(fn -> pid!() != first end, 10_000) != :timeout
  end

  test "the periodic check recycles a worker over memory_threshold_mb by itself" do
    start(%{memory_threshold_mb: 150, pool_size: 2}, lifecycle_check_interval: 100)
    ids = Map.new(Snakepit.list_workers(), &{os_pid(&1), &1})
    {:ok, %{"pid" => fat}} = Snakepit.execute("allocate", %{mb: 200})
    fat_id = Map.fetch!(ids, fat)

    # Nobody asks for a check: the lifecycle_check_interval timer does it.
    assert_receive {:recycled, %{reason: :memory_threshold, worker_id: ^fat_id}}, 30_000

    assert AppPool.wait_until(fn -> not Snakepit.Native.process_alive(fat) end, 30_000) !=
             :timeout

    # The slim worker was left alone, and so is the fat one's replacement.
    [slim_id] = Map.values(ids) -- [fat_id]
    refute_received {:recycled, %{worker_id: ^slim_id}}
    assert AppPool.await_workers(2, without: [fat]) != :timeout
    assert slim_id in Snakepit.list_workers()
    assert LifecycleManager.get_stats().recycles == %{memory_threshold: 1}
  end

  test "memory_threshold_mb measures the Python process's resident memory" do
    # No periodic check: the test measures first, then asks for one.
    start(%{memory_threshold_mb: 150, pool_size: 2}, lifecycle_check_interval: 60_000)
    ids = Map.new(Snakepit.list_workers(), &{os_pid(&1), &1})
    {:ok, %{"pid" => fat}} = Snakepit.execute("allocate", %{mb: 200})
    fat_id = Map.fetch!(ids, fat)

    rss = LifecycleManager.rss_mb(fat)
    assert is_float(rss) and rss >= 200
    send(LifecycleManager, :check)
    assert_receive {:recycled, %{reason: :memory_threshold, worker_id: ^fat_id}}, 10_000
    assert LifecycleManager.memory_recycle_counts() == %{default: 1}

    assert AppPool.wait_until(fn -> not Snakepit.Native.process_alive(fat) end, 10_000) !=
             :timeout

    # The slim worker was left alone.
    assert length(Snakepit.list_workers()) == 2
    assert LifecycleManager.get_stats().recycles == %{memory_threshold: 1}
  end

  test "recycle_worker/2: the replacement starts first, an in-flight call finishes on the old one",
       %{tmp_dir: dir} do
    start(%{})
    [old_id] = Snakepit.list_workers()
    old = os_pid(old_id)
    gate = Path.join(dir, "gate")
    on_exit(fn -> File.touch(gate) end)

    running =
      Task.async(fn -> Snakepit.execute("hold", %{path: gate}, timeout: 60_000) end)

    assert AppPool.wait_until(fn -> Snakepit.get_stats().busy == 1 end, 10_000) != :timeout

    assert :ok = LifecycleManager.recycle_worker(:default, old_id)
    assert {:error, :already_recycling} = LifecycleManager.recycle_worker(:default, old_id)
    assert {:error, :not_found} = LifecycleManager.recycle_worker(:default, "nobody")

    # The replacement comes up while the old worker still runs the call ...
    assert AppPool.wait_until(fn -> "default_worker_2" in Snakepit.list_workers() end, 30_000) !=
             :timeout

    assert Task.yield(running, 0) == nil
    assert Snakepit.Native.process_alive(old)

    # ... which finishes there once the test lets it.
    File.touch!(gate)
    assert {:ok, %{"pid" => ^old}} = Task.await(running, 30_000)
    assert_receive {:recycled, %{reason: :manual, worker_id: ^old_id}}, 30_000

    assert AppPool.wait_until(fn -> not Snakepit.Native.process_alive(old) end, 10_000) !=
             :timeout

    assert pid!() != old

    # The pool untracks the old worker once its process has exited, and
    # counts the call above for the new one (both on checkin, which the
    # pool handles after our call returned).
    assert AppPool.wait_until(
             fn ->
               match?(
                 %{
                   total_workers: 1,
                   workers: [%{worker_id: "default_worker_2", request_count: n}]
                 }
                 when n >= 1,
                 LifecycleManager.get_stats()
               )
             end,
             10_000
           ) != :timeout
  end

  defp os_pid(id) do
    {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
    meta.os_pid
  end
end
