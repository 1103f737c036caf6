defmodule Snakepit.Pool.QueueTest do
  # Real Python workers: one worker per pool, so queueing is observable. The
  # busy worker is held by a gate (a file the test creates), never by a
  # duration that races a queue timeout.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  # :default's queue timeout is generous: queued calls wait for the gate.
  # :short has a queue timeout of its own that the tests let run out. Both
  # queue first-in-first-out (`Snakepit.Pool.OverloadTest` covers the
  # default discipline, which would refuse calls stuck behind a gated one).
  @short_queue_timeout 400

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{
          name: :default,
          pool_size: 1,
          max_queue_size: 2,
          queue_timeout: 60_000,
          queue: [discipline: :fifo],
          adapter_args: AppPool.fixture_adapter()
        },
        %{
          name: :short,
          pool_size: 1,
          queue_timeout: @short_queue_timeout,
          queue: [discipline: :fifo],
          adapter_args: AppPool.fixture_adapter()
        }
      ]
    )
  end

  # Occupies the only worker of `pool` until `release/1` opens the gate.
  defp occupy(pool, dir) do
    gate = Path.join(dir, "gate-#{System.unique_integer([:positive])}")

    task =
      Task.async(fn -> Snakepit.execute("hold", %{path: gate}, pool: pool, timeout: 60_000) end)

    assert AppPool.wait_until(fn -> Snakepit.get_stats(pool).busy == 1 end, 10_000) != :timeout
    {task, gate}
  end

  defp release({_task, gate}), do: File.touch!(gate)

  defp finished({task, _gate}), do: Task.await(task, 30_000)

  # Still holding the worker: the gate is closed and the call has not returned.
  defp holding?({task, _gate}), do: Task.yield(task, 0) == nil

  defp queued(n, pool \\ :default),
    do: AppPool.wait_until(fn -> Snakepit.get_stats(pool).queued == n end, 10_000) != :timeout

  defp marks(path) do
    case File.read(path) do
      {:ok, text} -> String.split(text, "\n", trim: true)
      {:error, :enoent} -> []
    end
  end

  test "stats carry utilization and the wait and run percentiles of the calls", %{tmp_dir: dir} do
    blocker = occupy(:short, dir)
    held_from = System.monotonic_time(:millisecond)
    assert Snakepit.get_stats(:short).utilization == 1.0

    waiter =
      Task.async(fn -> Snakepit.execute("get_pid", %{}, pool: :short, timeout: 60_000) end)

    assert queued(1, :short)
    queued_at = System.monotonic_time(:millisecond)
    release(blocker)
    released_at = System.monotonic_time(:millisecond)
    assert {:ok, _} = finished(blocker)
    assert {:ok, _} = Task.await(waiter, 30_000)

    stats = Snakepit.get_stats(:short)
    assert stats.utilization == 0.0
    # The waiter waited at least from its queueing to the release, and the
    # blocker ran at least as long as it was held (a percentile is the
    # middle of its bucket, never below 8/9 of the value).
    assert stats.wait_time_ms.p99 >= (released_at - queued_at) * 0.875
    assert stats.run_time_ms.p99 >= (released_at - held_from) * 0.875
    assert stats.run_time_ms.p50 != nil
    # The pool-wide stats see the same samples.
    assert Snakepit.get_stats(:all).wait_time_ms.p99 >= (released_at - queued_at) * 0.875
  end

  test "a full queue refuses at once with :pool_saturated; the queued calls run in order", %{
    tmp_dir: dir
  } do
    before = Snakepit.get_stats(:default)
    blocker = occupy(:default, dir)
    log = Path.join(dir, "log")

    waiting =
      for mark <- ["q1", "q2"] do
        task =
          Task.async(fn ->
            Snakepit.execute("record", %{path: log, mark: mark}, timeout: 60_000)
          end)

        # One after the other, so FIFO order is the order asserted below.
        assert queued(if(mark == "q1", do: 1, else: 2))
        task
      end

    assert {:error, %Error{category: :pool, details: %{reason: :pool_saturated}}} =
             Snakepit.execute("record", %{path: log, mark: "refused"})

    # Refused while the worker was still held, and nothing queued ran yet.
    assert holding?(blocker)
    assert marks(log) == []

    release(blocker)
    assert {:ok, _} = finished(blocker)
    assert Enum.map(waiting, &Task.await(&1, 30_000)) |> Enum.all?(&match?({:ok, _}, &1))
    assert marks(log) == ["q1", "q2"]
    assert Snakepit.get_stats(:default).pool_saturated == before.pool_saturated + 1
  end

  test "a request that times out in the queue gets one timeout error and never runs", %{
    tmp_dir: dir
  } do
    before = Snakepit.get_stats(:short)
    log = Path.join(dir, "log")
    blocker = occupy(:short, dir)

    # Queue budget: the pool's queue_timeout, though the call allows more.
    assert {:error,
            %Error{
              category: :timeout,
              details: %{reason: :queue_timeout, timeout_ms: @short_queue_timeout}
            }} =
             Snakepit.execute("record", %{path: log, mark: "late"}, pool: :short, timeout: 60_000)

    # It gave up while the worker was still held.
    assert holding?(blocker)
    release(blocker)
    assert {:ok, _} = finished(blocker)
    # The queue is FIFO: once this ran, the timed-out one would have too.
    assert {:ok, _} = Snakepit.execute("record", %{path: log, mark: "after"}, pool: :short)
    assert marks(log) == ["after"]
    assert Snakepit.get_stats(:short).queue_timeouts == before.queue_timeouts + 1
    refute_received _
  end

  test "the caller's deadline caps the queue wait", %{tmp_dir: dir} do
    blocker = occupy(:default, dir)
    deadline = System.monotonic_time(:millisecond) + 150

    # The pool would let it wait 60 s: the deadline's 150 ms are what it got.
    assert {:error,
            %Error{category: :timeout, details: %{reason: :queue_timeout, timeout_ms: ms}}} =
             Snakepit.execute("get_pid", %{}, deadline_ms: deadline)

    assert ms <= 150
    assert holding?(blocker)

    # A short :timeout does the same.
    assert {:error,
            %Error{category: :timeout, details: %{reason: :queue_timeout, timeout_ms: ms}}} =
             Snakepit.execute("get_pid", %{}, timeout: 100)

    assert ms <= 100
    assert holding?(blocker)
    release(blocker)
    assert {:ok, _} = finished(blocker)
  end

  test "after queueing, the call runs on what is left of its budget: the inner timeout fires first",
       %{tmp_dir: dir} do
    blocker = occupy(:default, dir)
    started = Path.join(dir, "started")
    never = Path.join(dir, "never")

    call =
      Task.async(fn ->
        Snakepit.execute("hold", %{path: never, started: started}, timeout: 3_000)
      end)

    assert queued(1)
    refute File.exists?(started)
    release(blocker)
    assert {:ok, _} = finished(blocker)

    # It got the worker, ran, and was stopped by its own deadline: a
    # structured timeout from the call (it says how it was stopped), not a
    # queue timeout and not an exit.
    assert {:error, %Error{category: :timeout, details: details}} = Task.await(call, 30_000)
    assert Map.has_key?(details, :stop)
    refute details[:reason] == :queue_timeout
    assert File.exists?(started)

    # The timed-out call keeps the only slot until it is stopped, then the
    # pool serves again.
    assert AppPool.wait_until(
             fn ->
               match?(%{busy: 0, workers: 1, slots_down: 0}, Snakepit.get_stats(:default))
             end,
             30_000
           ) != :timeout

    assert {:ok, _} = Snakepit.execute("get_pid", %{})
  end

  test "a caller that dies while queued is dropped and its request never runs", %{tmp_dir: dir} do
    log = Path.join(dir, "log")
    blocker = occupy(:default, dir)

    {pid, ref} =
      spawn_monitor(fn ->
        Snakepit.execute("record", %{path: log, mark: "orphan"}, timeout: 60_000)
      end)

    assert queued(1)
    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}
    assert queued(0)

    release(blocker)
    assert {:ok, _} = finished(blocker)
    assert {:ok, _} = Snakepit.execute("record", %{path: log, mark: "next"})
    assert marks(log) == ["next"]
    assert Snakepit.get_stats(:default).busy == 0
  end

  test "a caller that dies while holding a worker gives its slot back", %{tmp_dir: dir} do
    gate = Path.join(dir, "gate")
    on_exit(fn -> File.touch(gate) end)
    {pid, ref} = spawn_monitor(fn -> Snakepit.execute("hold", %{path: gate}, timeout: 60_000) end)

    assert AppPool.wait_until(fn -> Snakepit.get_stats(:default).busy == 1 end, 10_000) !=
             :timeout

    Process.exit(pid, :kill)
    assert_receive {:DOWN, ^ref, :process, ^pid, :killed}

    assert AppPool.wait_until(fn -> Snakepit.get_stats(:default).busy == 0 end, 30_000) !=
             :timeout

    assert {:ok, _} = Snakepit.execute("get_pid", %{})
  end

  test "timeout helpers follow the documented examples" do
    assert Snakepit.Pool.derive_rpc_timeout_from_opts([], 60_000) == 58_800

    # What is left of a deadline is read when the helper runs: between t0 and t1.
    t0 = System.monotonic_time(:millisecond)
    deadline = t0 + 59_500
    rpc = Snakepit.Pool.derive_rpc_timeout_from_opts([deadline_ms: deadline], 60_000)
    queue = Snakepit.Pool.effective_queue_timeout_ms([deadline_ms: t0 + 5_000], 10_000)
    t1 = System.monotonic_time(:millisecond)
    assert rpc in (deadline - t1 - 1_200)..(deadline - t0 - 1_200)
    assert queue in (t0 + 5_000 - t1)..5_000

    assert Snakepit.Pool.derive_rpc_timeout_from_opts([timeout: 30_000], 60_000) == 28_800
    assert Snakepit.Pool.effective_queue_timeout_ms([], 10_000) == 10_000

    assert Snakepit.Pool.effective_queue_timeout_ms(
             [deadline_ms: System.monotonic_time(:millisecond) + 60_000],
             10_000
           ) == 10_000

    assert Snakepit.Pool.get_default_timeout_for_call(:execute, %{}, []) ==
             Snakepit.Defaults.default_timeout()

    assert Snakepit.Pool.get_default_timeout_for_call(:queue, %{}, []) ==
             Snakepit.Defaults.pool_queue_timeout()
  end
end
