defmodule Snakepit.ProcessManagementTest do
  # The no-orphan guarantee, scenario by scenario, with real Python workers:
  # after each scenario the process table holds nothing with the run id.
  # How fast that happens is measured by bench/, not asserted here; the
  # limits below only keep a broken build from waiting forever.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir
  @moduletag timeout: 180_000

  alias Snakepit.{ProcessKiller, RunID}
  alias Snakepit.GRPC.Client
  alias Snakepit.Test.{AppPool, ExternalBeam}

  @pool 4
  @clean_within_ms 30_000

  # The shipped ShowcaseAdapter plus test-only tools (spawn_child) and a
  # trace of its cleanup().
  defp fixture_env,
    do: [
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
    ]

  defp leftovers(run_id), do: ProcessKiller.find_by_run_id(run_id)
  defp alive(pids), do: Enum.filter(pids, &ProcessKiller.process_alive?/1)

  # Waits until nothing with `run_id` and none of `pids` is alive.
  defp assert_clean(label, run_id, pids) do
    elapsed =
      AppPool.wait_until(
        fn -> leftovers(run_id) == [] and alive(pids) == [] end,
        @clean_within_ms
      )

    assert elapsed != :timeout,
           "#{label}: still alive after #{@clean_within_ms} ms: #{inspect(leftovers(run_id) ++ alive(pids))}"
  end

  defp start_pool!(env \\ []) do
    :ok = AppPool.start!(Keyword.merge([pool_size: @pool] ++ fixture_env(), env))
    :ok = Snakepit.Pool.await_init_complete()
    workers = AppPool.worker_os_pids()
    assert length(workers) == @pool
    workers
  end

  # Has every worker start a `sleep 600` grandchild; returns their pids.
  defp spawn_grandchildren do
    for {_id, pid, _meta} <-
          Registry.select(Snakepit.Pool.Registry, [
            {{:"$1", :"$2", :"$3"}, [], [{{:"$1", :"$2", :"$3"}}]}
          ]) do
      info = Snakepit.GRPCWorker.get_info(pid)

      {:ok, %{"child_pid" => child}} =
        Client.execute(%{id: info.id, channel: info.channel}, "spawn_child", %{}, [])

      assert ProcessKiller.process_alive?(child)
      child
    end
  end

  @spawn_grandchildren """
  for {_id, pid, _} <- Registry.select(Snakepit.Pool.Registry, [{{:"$1", :"$2", :"$3"}, [], [{{:"$1", :"$2", :"$3"}}]}]) do
    info = Snakepit.GRPCWorker.get_info(pid)
    {:ok, %{"child_pid" => c}} = Snakepit.GRPC.Client.execute(%{id: info.id, channel: info.channel}, "spawn_child", %{}, [])
    IO.puts("EXTRA \#{c}")
  end
  """

  describe "scenario 1: Application.stop(:snakepit)" do
    test "stops every worker gracefully", %{tmp_dir: dir} do
      workers = start_pool!(adapter_env: [{"SNAKEPIT_TEST_CLEANUP_DIR", dir}])
      assert File.ls!(dir) == []
      :ok = Application.stop(:snakepit)
      assert_clean("scenario 1, Application.stop", RunID.current(), workers)

      # Each worker went through its SIGTERM handling: the server stopped and
      # ran the adapter's cleanup(), which a SIGKILL would have skipped.
      assert dir |> File.ls!() |> Enum.map(&String.to_integer/1) |> Enum.sort() == workers

      for pid <- workers,
          do: assert(File.read!(Path.join(dir, "#{pid}")) == "cleanup\n")
    end
  end

  describe "scenario 2: the pool's supervisor tree crashes" do
    test "old workers go, new ones come" do
      workers = start_pool!()
      ref = Process.monitor(Process.whereis(Snakepit.Pool))
      Process.exit(Process.whereis(Snakepit.Pool), :kill)
      assert_receive {:DOWN, ^ref, :process, _, :killed}
      assert_clean("scenario 2, pool crash", "none", workers)
      # The OS processes can be gone a few ms before the supervisor has
      # finished with their Elixir owners and restarted the pool.
      assert AppPool.wait_until(fn -> Process.whereis(Snakepit.Pool) != nil end, 10_000) !=
               :timeout

      assert :ok = Snakepit.Pool.await_init_complete()
      assert length(AppPool.worker_os_pids()) == @pool
      assert {:ok, _} = Snakepit.execute("ping", %{})
    end
  end

  describe "scenario 3: kill -9 of the BEAM" do
    test "every worker dies with it" do
      vm =
        ExternalBeam.start!(pool_size: @pool, data_dir: Application.get_env(:snakepit, :data_dir))

      assert length(vm.workers) == @pool
      assert alive(vm.workers) == vm.workers
      # The check below sees them: it is not vacuous.
      assert vm.workers -- leftovers(vm.run_id) == []
      :ok = ProcessKiller.kill_process(vm.os_pid, :sigkill)
      assert_clean("scenario 3, kill -9 of the BEAM", vm.run_id, vm.workers)
    end
  end

  describe "scenario 4: kill -9 of a worker's Python process" do
    test "it is replaced and the pool returns to #{@pool}" do
      [victim | _] = workers = start_pool!()
      :ok = ProcessKiller.kill_process(victim, :sigkill)
      assert_clean("scenario 4, kill -9 of a worker", "none", [victim])

      assert AppPool.await_workers(@pool, without: [victim]) != :timeout

      assert length(AppPool.worker_os_pids() -- workers) == 1
    end
  end

  describe "scenario 5: workers with grandchildren" do
    test "Application.stop takes the grandchildren too" do
      workers = start_pool!()
      children = spawn_grandchildren()
      :ok = Application.stop(:snakepit)
      assert_clean("scenario 5.1, stop with grandchildren", RunID.current(), workers ++ children)
    end

    test "kill -9 of the BEAM takes the grandchildren too" do
      vm =
        ExternalBeam.start!(
          [pool_size: @pool, data_dir: Application.get_env(:snakepit, :data_dir)] ++
            fixture_env(),
          @spawn_grandchildren
        )

      children = Enum.map(vm.extra, &String.to_integer/1)
      assert length(children) == @pool
      assert alive(children) == children
      :ok = ProcessKiller.kill_process(vm.os_pid, :sigkill)

      assert_clean(
        "scenario 5.3, kill -9 of the BEAM with grandchildren",
        vm.run_id,
        vm.workers ++ children
      )
    end

    test "kill -9 of a worker takes its grandchild too" do
      start_pool!()
      children = spawn_grandchildren()
      [{victim, child}] = Enum.take(Enum.zip(parents_of(children), children), 1)
      :ok = ProcessKiller.kill_process(victim, :sigkill)

      assert_clean("scenario 5.4, kill -9 of a worker with a grandchild", "none", [victim, child])

      assert AppPool.await_workers(@pool, without: [victim]) != :timeout
    end
  end

  defp parents_of(children) do
    for child <- children do
      "/proc/#{child}/stat"
      |> File.read!()
      |> String.split(") ")
      |> List.last()
      |> String.split(" ")
      |> Enum.at(1)
      |> String.to_integer()
    end
  end

  describe "scenario 6: two instances on one machine" do
    test "stopping or restarting one never touches the other's workers" do
      other =
        ExternalBeam.start!(
          pool_size: 2,
          instance_name: "other_instance",
          data_dir: Application.get_env(:snakepit, :data_dir)
        )

      on_exit(fn -> ProcessKiller.kill_process(other.os_pid, :sigkill) end)

      mine = start_pool!(instance_name: "this_instance")
      :ok = Application.stop(:snakepit)
      assert_clean("scenario 6, stop of this instance", RunID.current(), mine)
      assert alive(other.workers) == other.workers

      # A restart runs the boot-time orphan cleanup: still hands off.
      start_pool!(instance_name: "this_instance")
      assert alive(other.workers) == other.workers
      assert Snakepit.cleanup() == :ok
      assert alive(other.workers) == other.workers
    end
  end

  describe "scenario 7: boot after a crash that left workers alive" do
    test "the next boot of the instance finds them by registry and run id and kills them" do
      data_dir = Application.get_env(:snakepit, :data_dir)

      crashed =
        ExternalBeam.start!(
          [
            pool_size: @pool,
            instance_name: "crashy",
            data_dir: data_dir,
            orphan_protection: false
          ] ++ fixture_env(),
          @spawn_grandchildren
        )

      children = Enum.map(crashed.extra, &String.to_integer/1)
      :ok = ProcessKiller.kill_process(crashed.os_pid, :sigkill)
      # Without the parent-death path they outlive their VM.
      assert ProcessKiller.wait_until_gone(
               fn -> ProcessKiller.process_alive?(crashed.os_pid) end,
               @clean_within_ms
             )

      assert alive(crashed.workers) == crashed.workers

      :ok = AppPool.restart(instance_name: "crashy", pool_size: 1)
      assert_clean("scenario 7, boot after crash", crashed.run_id, crashed.workers)

      # Grandchildren of an orphaned worker are in its process group.
      assert_clean("scenario 7, grandchildren", crashed.run_id, children)
    end
  end
end
