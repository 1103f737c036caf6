defmodule Snakepit.Pool.MultiPoolTest do
  # Real Python workers: two named pools, one per worker profile.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{name: :default, pool_size: 2, adapter_args: AppPool.fixture_adapter()},
        %{
          name: :threads,
          worker_profile: :thread,
          pool_size: 1,
          threads_per_worker: 4,
          pool_identifier: :compute,
          adapter_args: AppPool.fixture_adapter("ThreadedTestAdapter")
        }
      ]
    )
  end

  defp pid_of(opts) do
    {:ok, %{"pid" => pid}} = Snakepit.execute("get_pid", %{}, opts)
    pid
  end

  defp intervals(n, ms, opts) do
    1..n
    |> Task.async_stream(fn _ -> Snakepit.execute("interval", %{ms: ms}, opts) end,
      max_concurrency: n,
      timeout: 10_000
    )
    |> Enum.map(fn {:ok, {:ok, r}} -> r end)
  end

  defp overlap?(a, b), do: a["started"] < b["finished"] and b["started"] < a["finished"]

  test "the pool: option routes each call to its pool; the first pool is the default" do
    default_pids = for _ <- 1..4, into: MapSet.new(), do: pid_of([])
    thread_pid = pid_of(pool: :threads)
    assert MapSet.size(default_pids) == 2
    refute thread_pid in default_pids
    assert pid_of(pool: :default) in default_pids
  end

  test "an unknown pool is a pool error" do
    assert {:error, %Error{category: :pool, message: message}} =
             Snakepit.execute("get_pid", %{}, pool: :nope)

    assert message =~ ":nope"
  end

  test "the thread profile runs threads_per_worker calls at once in one process" do
    results = intervals(4, 300, pool: :threads)
    assert results |> Enum.map(& &1["pid"]) |> Enum.uniq() |> length() == 1
    assert results |> Enum.map(& &1["thread"]) |> Enum.uniq() |> length() == 4
    for a <- results, b <- results, a != b, do: assert(overlap?(a, b))
  end

  test "the process profile runs one call at a time per worker" do
    results = intervals(4, 150, [])
    by_pid = Enum.group_by(results, & &1["pid"])
    assert map_size(by_pid) == 2

    for {_pid, runs} <- by_pid, a <- runs, b <- runs, a != b do
      refute overlap?(a, b)
    end
  end

  test "process workers hold native libraries to one thread; stats and lists are per pool" do
    for var <- ~w(OPENBLAS_NUM_THREADS OMP_NUM_THREADS MKL_NUM_THREADS NUMEXPR_NUM_THREADS) do
      assert {:ok, %{"value" => "1"}} = Snakepit.execute("getenv", %{name: var})
    end

    # The thread profile leaves them as the environment has them.
    inherited = System.get_env("OMP_NUM_THREADS")

    assert {:ok, %{"value" => ^inherited}} =
             Snakepit.execute("getenv", %{name: "OMP_NUM_THREADS"}, pool: :threads)

    assert %{workers: 2} = Snakepit.Pool.get_stats(Snakepit.Pool, :default)
    assert %{workers: 1, busy: 0, available: 1} = Snakepit.get_stats(:threads)
    assert %{workers: 3} = Snakepit.get_stats()

    assert Snakepit.Pool.list_workers(Snakepit.Pool, :threads) == ["threads_worker_1"]
    assert Snakepit.list_workers(:default) == ["default_worker_1", "default_worker_2"]
    assert length(Snakepit.list_workers()) == 3
    assert {:error, %Error{category: :pool}} = Snakepit.Pool.get_stats(Snakepit.Pool, :nope)
  end

  test "the registry keeps canonical metadata for every worker" do
    assert {:ok, {pid, meta}} = Snakepit.Pool.Registry.fetch_worker("threads_worker_1")
    assert is_pid(pid)

    assert %{
             worker_module: Snakepit.GRPCWorker,
             pool_name: :threads,
             pool_identifier: :compute,
             adapter_module: Snakepit.Adapters.GRPCPython,
             worker_profile: :thread,
             capacity: 4
           } = meta

    assert meta.os_pid == pid_of(pool: :threads)
    assert {:ok, "threads_worker_1"} = Snakepit.Pool.Registry.get_worker_id_by_pid(pid)
    assert Snakepit.Pool.Registry.worker_count() == 3
    assert "default_worker_1" in Snakepit.Pool.Registry.list_workers()
    assert Snakepit.Pool.Registry.metadata_keys() -- Map.keys(meta) == []
    assert {:error, :not_found} = Snakepit.Pool.Registry.fetch_worker("nobody")
  end

  @tag :tmp_dir
  test "worker profiles report capacity, metadata, load and health", %{tmp_dir: dir} do
    {:ok, {thread_worker, _}} = Snakepit.Pool.Registry.fetch_worker("threads_worker_1")
    {:ok, {process_worker, _}} = Snakepit.Pool.Registry.fetch_worker("default_worker_1")

    assert Snakepit.WorkerProfile.Thread.get_capacity(thread_worker) == 4
    assert Snakepit.WorkerProfile.Process.get_capacity(process_worker) == 1
    assert Snakepit.WorkerProfile.Thread.health_check(thread_worker) == :ok
    assert {:ok, %{profile: :thread}} = Snakepit.WorkerProfile.Thread.get_metadata(thread_worker)
    assert Snakepit.WorkerProfile.Process.get_load(process_worker) == 0

    # load/1 answers 0 for a worker it cannot look up too, so an idle 0
    # proves little: while calls hold both :default workers (one slot each)
    # and one thread of the :threads worker, each reports a load of 1.
    gate = Path.join(dir, "gate")

    holders =
      for {pool, i} <- [default: 1, default: 2, threads: 3] do
        started = Path.join(dir, "started-#{i}")

        task =
          Task.async(fn ->
            Snakepit.execute("hold", %{path: gate, started: started}, pool: pool)
          end)

        {task, started}
      end

    for {_, started} <- holders,
        do: assert(AppPool.wait_until(fn -> File.exists?(started) end, 10_000) != :timeout)

    assert Snakepit.WorkerProfile.Process.get_load(process_worker) == 1
    assert Snakepit.WorkerProfile.Thread.get_load(thread_worker) == 1

    File.write!(gate, "")
    for {task, _} <- holders, do: assert({:ok, _} = Task.await(task, 10_000))

    assert AppPool.wait_until(
             fn ->
               Snakepit.WorkerProfile.Process.get_load(process_worker) == 0 and
                 Snakepit.WorkerProfile.Thread.get_load(thread_worker) == 0
             end,
             5_000
           ) != :timeout

    assert {:ok, %{"pid" => _}} =
             Snakepit.WorkerProfile.Process.execute_request(
               process_worker,
               %{command: "get_pid", args: %{}},
               5_000
             )
  end
end

defmodule Snakepit.Pool.BrokenPoolTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  test "a pool whose workers cannot start never blocks a healthy one" do
    :ok =
      AppPool.restart(
        python_path: [AppPool.fixtures_dir()],
        pools: [
          %{name: :broken, pool_size: 2, adapter_args: ["--adapter", "no_such_module.Nope"]},
          %{name: :good, pool_size: 1, adapter_args: AppPool.fixture_adapter()}
        ]
      )

    assert :ok = Snakepit.Pool.await_ready(:good, 30_000)
    assert {:ok, %{"pid" => _}} = Snakepit.execute("get_pid", %{}, pool: :good)

    assert {:error, %Error{category: :pool, details: %{reason: :pool_failed, pool: :broken}}} =
             Snakepit.Pool.await_ready(:broken, 30_000)

    assert {:error, %Error{category: :pool, details: %{reason: :pool_failed}}} =
             Snakepit.execute("get_pid", %{}, pool: :broken)

    # Waiting for all pools names the broken one.
    assert {:error, %Error{message: message}} = Snakepit.Pool.await_ready(Snakepit.Pool, 5_000)
    assert message =~ ":broken"
    assert {:ok, _} = Snakepit.execute("get_pid", %{}, pool: :good)
  end
end

defmodule Snakepit.Pool.BatchedStartupTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.AppPool

  @tag :tmp_dir
  test "process workers start in batches of startup_batch_size", %{tmp_dir: dir} do
    gate = Path.join(dir, "gate")

    :ok =
      AppPool.restart(
        python_path: [AppPool.fixtures_dir()],
        pools: [
          %{
            name: :default,
            pool_size: 5,
            startup_batch_size: 2,
            startup_batch_delay_ms: 60_000,
            adapter_args: AppPool.fixture_adapter(),
            adapter_env: [{"SNAKEPIT_TEST_GATE", gate}]
          }
        ]
      )

    # The pool has handled its start-up: only the first batch exists, held
    # at the gate inside the adapter's initialize.
    _ = :sys.get_state(Snakepit.Pool)
    assert Snakepit.Pool.WorkerSupervisor.worker_count() == 2

    assert {:error, %Snakepit.Error{category: :timeout}} =
             Snakepit.Pool.await_ready(Snakepit.Pool, 200)

    # Opening the gate lets the first batch get ready, which starts the next
    # one at once rather than after the 60 s delay.
    File.write!(gate, "")
    assert :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 30_000)
    assert Snakepit.Pool.WorkerSupervisor.worker_count() == 5
    assert length(Snakepit.list_workers()) == 5
  end
end
