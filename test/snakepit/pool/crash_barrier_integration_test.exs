defmodule Snakepit.Pool.CrashBarrierIntegrationTest do
  # Real Python workers that die in the middle of a call.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      crash_barrier: [enabled: true, max_retries: 1, taint_ms: 60_000, backoff_ms: [10]],
      pools: [%{name: :default, pool_size: 2, adapter_args: AppPool.fixture_adapter()}]
    )
  end

  setup do
    assert AppPool.wait_until(fn -> length(Snakepit.list_workers()) == 2 end, 15_000) != :timeout
    parent = self()
    handler = "cb-#{System.unique_integer()}"

    Snakepit.Telemetry.attach_many(
      handler,
      [[:snakepit, :crash_barrier, :retry], [:snakepit, :worker, :tainted]],
      fn event, m, meta, _ -> send(parent, {:event, event, m, meta}) end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(handler) end)
    :ok
  end

  test "a call whose worker dies returns the crash; no retry when it is not idempotent" do
    assert {:error, %Error{category: :worker, details: details, message: message}} =
             Snakepit.execute("crash", %{})

    assert details.reason == :worker_crash
    assert details.exit_status == {:signaled, 9}
    assert details.crash.classification == :killed
    assert message =~ "crashed"
    refute_received {:event, [:snakepit, :crash_barrier, :retry], _, _}
    # The crashed worker is tainted.
    assert_receive {:event, [:snakepit, :worker, :tainted], _, %{worker_id: id, reason: :killed}},
                   2_000

    assert Snakepit.CrashBarrier.worker_tainted?(id)
  end

  test "an idempotent call (idempotent: true in args) is retried on another worker", %{
    tmp_dir: dir
  } do
    marker = Path.join(dir, "crashed_once")

    assert {:ok, %{"pid" => pid}} =
             Snakepit.execute("crash_once", %{path: marker, idempotent: true})

    crashed_pid = marker |> File.read!() |> String.to_integer()
    assert pid != crashed_pid

    assert_receive {:event, [:snakepit, :crash_barrier, :retry], %{attempt: 1},
                    %{classification: :killed, worker_id: crashed}}

    # The retry avoided the crashed worker (its replacement is tainted).
    {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(other_worker(crashed))
    assert meta.os_pid == pid
  end

  test "idempotent: true in the options works too, and retries are bounded", %{tmp_dir: dir} do
    assert {:ok, _} =
             Snakepit.execute("crash_once", %{path: Path.join(dir, "m")}, idempotent: true)

    # A call that crashes every worker it touches gives up after max_retries.
    assert {:error, %Error{details: %{reason: :worker_crash}}} =
             Snakepit.execute("crash", %{}, idempotent: true)

    assert_receive {:event, [:snakepit, :crash_barrier, :retry], %{attempt: 1}, _}
    refute_received {:event, [:snakepit, :crash_barrier, :retry], %{attempt: 2}, _}
  end

  defp other_worker(id) do
    Enum.find(Snakepit.Pool.Registry.list_workers(), &(&1 != id))
  end
end

defmodule Snakepit.Pool.CrashWithoutBarrierTest do
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  test "without the crash barrier a crash is reported and idempotent calls are not retried", %{
    tmp_dir: dir
  } do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [%{name: :default, pool_size: 2, adapter_args: AppPool.fixture_adapter()}]
    )

    assert {:error, %Error{details: %{reason: :worker_crash}}} =
             Snakepit.execute("crash_once", %{path: Path.join(dir, "m"), idempotent: true})

    for id <- ["default_worker_1", "default_worker_2"],
        do: refute(Snakepit.CrashBarrier.worker_tainted?(id))
  end
end

defmodule Snakepit.Pool.CrashBarrierPolicyTest do
  # The crash barrier's knobs, each set by a pool's own crash_barrier key,
  # with real Python workers that die in the middle of a call.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.{CrashBarrier, Error}
  alias Snakepit.Test.AppPool

  @backoff [40, 90]
  @taint_ms 3_000

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{
          name: :backoff,
          pool_size: 2,
          adapter_args: AppPool.fixture_adapter(),
          crash_barrier: %{enabled: true, max_retries: 2, backoff_ms: @backoff, taint_ms: 60_000}
        },
        %{
          name: :never,
          pool_size: 2,
          adapter_args: AppPool.fixture_adapter(),
          crash_barrier: %{enabled: true, retry: :never, max_retries: 3, taint_ms: 60_000}
        },
        %{
          name: :expiry,
          pool_size: 2,
          adapter_args: AppPool.fixture_adapter(),
          crash_barrier: %{enabled: true, max_retries: 0, taint_ms: @taint_ms}
        }
      ]
    )
  end

  setup do
    for pool <- [:backoff, :never, :expiry] do
      assert AppPool.wait_until(fn -> length(Snakepit.list_workers(pool)) == 2 end, 30_000) !=
               :timeout
    end

    parent = self()
    handler = "cbp-#{System.unique_integer()}"

    Snakepit.Telemetry.attach_many(
      handler,
      [
        [:snakepit, :crash_barrier, :retry],
        [:snakepit, :worker, :tainted],
        [:snakepit, :worker, :restarted],
        [:snakepit, :grpc_worker, :execute, :stop]
      ],
      fn event, m, meta, _ ->
        send(parent, {:event, event, m, meta, System.monotonic_time()})
      end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(handler) end)
    :ok
  end

  defp os_pid(id) do
    {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
    meta.os_pid
  end

  defp pid_of_call(pool) do
    {:ok, %{"pid" => pid}} = Snakepit.execute("get_pid", %{}, pool: pool)
    pid
  end

  # The attempts of the call in this process, in order: when each began.
  defp attempt_starts(acc \\ []) do
    receive do
      {:event, [:snakepit, :grpc_worker, :execute, :stop], %{duration: d}, %{command: "crash"},
       at} ->
        attempt_starts([at - d | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  test "backoff_ms: each retry waits its step before the next attempt" do
    assert {:error, %Error{details: %{reason: :worker_crash}}} =
             Snakepit.execute("crash", %{}, pool: :backoff, idempotent: true)

    # max_retries: 2, one step each, in order; no third retry.
    [step1, step2] = @backoff

    assert_received {:event, [:snakepit, :crash_barrier, :retry],
                     %{attempt: 1, backoff_ms: ^step1}, %{pool: :backoff}, retry1}

    assert_received {:event, [:snakepit, :crash_barrier, :retry],
                     %{attempt: 2, backoff_ms: ^step2}, %{pool: :backoff}, retry2}

    refute_received {:event, [:snakepit, :crash_barrier, :retry], %{attempt: 3}, _, _}

    # Three attempts; the second and third began no earlier than their
    # retry's backoff after it (a lower bound: the pause is at least that).
    assert [_first, second, third] = attempt_starts()
    ms = &System.convert_time_unit(&1, :native, :millisecond)
    assert ms.(second - retry1) >= step1
    assert ms.(third - retry2) >= step2
  end

  test "retry: :never returns the crash of an idempotent call; the worker is still tainted", %{
    tmp_dir: dir
  } do
    marker = Path.join(dir, "crashed_once")

    assert {:error, %Error{category: :worker, details: %{reason: :worker_crash}}} =
             Snakepit.execute("crash_once", %{path: marker, idempotent: true}, pool: :never)

    # It ran once and crashed; a retry would have succeeded, but none came.
    crashed = marker |> File.read!() |> String.to_integer()
    refute_received {:event, [:snakepit, :crash_barrier, :retry], _, _, _}

    assert_receive {:event, [:snakepit, :worker, :tainted], _, %{pool: :never, worker_id: id}, _},
                   10_000

    assert CrashBarrier.worker_tainted?(id)
    assert {:ok, %{"pid" => pid}} = Snakepit.execute("crash_once", %{path: marker}, pool: :never)
    assert pid != crashed
  end

  test "a taint routes calls around the worker until taint_ms has passed, then it serves again" do
    assert {:error, %Error{details: %{reason: :worker_crash}}} =
             Snakepit.execute("crash", %{}, pool: :expiry)

    assert_receive {:event, [:snakepit, :worker, :tainted], %{duration_ms: @taint_ms},
                    %{pool: :expiry, worker_id: tainted}, _},
                   10_000

    # Its replacement (same slot id) is up and free, yet not chosen.
    assert_receive {:event, [:snakepit, :worker, :restarted], _, %{worker_id: ^tainted}, _},
                   30_000

    [other] = Snakepit.list_workers(:expiry) -- [tainted]
    tainted_pid = os_pid(tainted)
    assert CrashBarrier.worker_tainted?(tainted)
    assert for(_ <- 1..4, do: pid_of_call(:expiry)) == List.duplicate(os_pid(other), 4)
    # (All four calls were made under the taint.)
    assert CrashBarrier.worker_tainted?(tainted)

    # Once the taint is over, the least recently used worker is it again.
    assert AppPool.wait_until(fn -> pid_of_call(:expiry) == tainted_pid end, 30_000) !=
             :timeout

    refute CrashBarrier.worker_tainted?(tainted)
  end
end
