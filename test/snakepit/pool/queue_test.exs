defmodule Snakepit.Pool.QueueTest do
  # Real Python workers: one worker, so queueing is observable.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{
          name: :default,
          pool_size: 1,
          max_queue_size: 2,
          queue_timeout: 400,
          adapter_args: AppPool.fixture_adapter()
        }
      ]
    )
  end

  @moduletag :tmp_dir

  # Occupies the only worker until the returned task's call ends.
  defp occupy(ms) do
    task = Task.async(fn -> Snakepit.execute("interval", %{ms: ms}) end)
    assert AppPool.wait_until(fn -> Snakepit.get_stats().busy == 1 end, 5_000) != :timeout
    task
  end

  defp queued(n),
    do: AppPool.wait_until(fn -> Snakepit.get_stats().queued == n end, 5_000) != :timeout

  defp marks(path) do
    case File.read(path) do
      {:ok, text} -> String.split(text, "\n", trim: true)
      {:error, :enoent} -> []
    end
  end

  test "a full queue refuses at once with :pool_saturated", %{tmp_dir: dir} do
    before = Snakepit.get_stats()
    # Shorter than the queue timeout: the queued calls do run.
    blocker = occupy(250)
    log = Path.join(dir, "log")

    waiting =
      for mark <- ["q1", "q2"] do
        Task.async(fn ->
          Snakepit.execute("record", %{path: log, mark: mark}, timeout: 10_000)
        end)
      end

    assert queued(2)

    assert {:error, %Error{category: :pool, details: %{reason: :pool_saturated}}} =
             Snakepit.execute("record", %{path: log, mark: "refused"})

    assert {:ok, _} = Task.await(blocker)
    assert Enum.map(waiting, &Task.await/1) |> Enum.all?(&match?({:ok, _}, &1))
    assert marks(log) == ["q1", "q2"]
    assert Snakepit.get_stats().pool_saturated == before.pool_saturated + 1
  end

  test "a request that times out in the queue gets one timeout error and never runs", %{
    tmp_dir: dir
  } do
    before = Snakepit.get_stats()
    log = Path.join(dir, "log")
    blocker = occupy(1_000)

    # Queue budget: the pool's queue_timeout of 400 ms.
    assert {:error,
            %Error{category: :timeout, details: %{reason: :queue_timeout, timeout_ms: 400}}} =
             Snakepit.execute("record", %{path: log, mark: "late"}, timeout: 30_000)

    assert {:ok, _} = Task.await(blocker)
    # The queue is FIFO: once this ran, the timed-out one would have too.
    assert {:ok, _} = Snakepit.execute("record", %{path: log, mark: "after"})
    assert marks(log) == ["after"]
    assert Snakepit.get_stats().queue_timeouts == before.queue_timeouts + 1
    refute_received _
  end

  test "the caller's deadline caps the queue wait" do
    blocker = occupy(1_000)
    deadline = System.monotonic_time(:millisecond) + 150

    assert {:error,
            %Error{category: :timeout, details: %{reason: :queue_timeout, timeout_ms: ms}}} =
             Snakepit.execute("get_pid", %{}, deadline_ms: deadline)

    assert ms <= 150
    assert System.monotonic_time(:millisecond) < deadline + 100

    # A short :timeout does the same.
    assert {:error, %Error{category: :timeout, details: %{timeout_ms: ms}}} =
             Snakepit.execute("get_pid", %{}, timeout: 100)

    assert ms <= 100
    Task.await(blocker)
  end

  test "what remains after queueing is the call's budget: the inner timeout fires first" do
    blocker = occupy(300)
    started = System.monotonic_time(:millisecond)

    # Waits ~300 ms in the queue, then has ~600 ms (minus margins) for a
    # 2 s sleep: a structured timeout, not an exit.
    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute("interval", %{ms: 2_000}, timeout: 900)

    assert System.monotonic_time(:millisecond) - started < 1_500
    Task.await(blocker)
    # The timed-out sleep keeps the only slot until it is stopped (here:
    # its worker killed after cancel_grace_ms), then the pool serves again.
    assert AppPool.wait_until(
             fn -> match?(%{busy: 0, workers: 1, slots_down: 0}, Snakepit.get_stats()) end,
             15_000
           ) != :timeout

    assert {:ok, _} = Snakepit.execute("get_pid", %{})
  end

  test "a caller that dies while queued is dropped and its request never runs", %{tmp_dir: dir} do
    log = Path.join(dir, "log")
    blocker = occupy(600)

    {pid, ref} =
      spawn_monitor(fn ->
        Snakepit.execute("record", %{path: log, mark: "orphan"}, timeout: 30_000)
      end)

    assert queued(1)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}
    assert queued(0)

    assert {:ok, _} = Task.await(blocker)
    assert {:ok, _} = Snakepit.execute("record", %{path: log, mark: "next"})
    assert marks(log) == ["next"]
    assert Snakepit.get_stats().busy == 0
  end

  test "a caller that dies while holding a worker gives its slot back" do
    {pid, ref} = spawn_monitor(fn -> Snakepit.execute("interval", %{ms: 5_000}) end)
    assert AppPool.wait_until(fn -> Snakepit.get_stats().busy == 1 end, 5_000) != :timeout
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}
    assert AppPool.wait_until(fn -> Snakepit.get_stats().busy == 0 end, 5_000) != :timeout
  end

  test "timeout helpers follow the documented examples" do
    assert Snakepit.Pool.derive_rpc_timeout_from_opts([], 60_000) == 58_800
    now = System.monotonic_time(:millisecond)
    rpc = Snakepit.Pool.derive_rpc_timeout_from_opts([deadline_ms: now + 59_500], 60_000)
    assert rpc in 58_250..58_300
    assert Snakepit.Pool.derive_rpc_timeout_from_opts([timeout: 30_000], 60_000) == 28_800
    assert Snakepit.Pool.effective_queue_timeout_ms([], 10_000) == 10_000

    assert Snakepit.Pool.effective_queue_timeout_ms([deadline_ms: now + 5_000], 10_000) in 4_950..5_000

    assert Snakepit.Pool.effective_queue_timeout_ms([deadline_ms: now + 60_000], 10_000) == 10_000

    assert Snakepit.Pool.get_default_timeout_for_call(:execute, %{}, []) ==
             Snakepit.Defaults.default_timeout()

    assert Snakepit.Pool.get_default_timeout_for_call(:queue, %{}, []) ==
             Snakepit.Defaults.pool_queue_timeout()
  end
end
