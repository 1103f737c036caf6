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
