defmodule Snakepit.Pool.ElasticTest do
  # Pools that breathe, on real workers: growing while calls wait,
  # shrinking when idle, resize/2 under load (calls in flight, strict
  # sessions), the slot environment across a kill and a recycle. Busy
  # workers are held by gates (files the test creates); changes are awaited
  # as telemetry events.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Pool
  alias Snakepit.Test.{AppPool, CallLoad}

  defp start!(pool, env \\ []) do
    pool = Map.merge(%{name: :default, adapter_args: AppPool.fixture_adapter()}, pool)
    AppPool.start!([python_path: [AppPool.fixtures_dir()], pools: [pool]] ++ env)
  end

  defp listen(events), do: Snakepit.Test.Events.forward(events)

  # Waits for the scale event that takes the pool to `to` (earlier steps
  # on the way are skipped).
  defp await_scale(to, reason, timeout \\ 15_000) do
    receive do
      {:event, [:snakepit, :pool, :scale], %{to: ^to} = m, %{reason: ^reason} = meta} ->
        {m, meta}

      {:event, [:snakepit, :pool, :scale], _, _} ->
        await_scale(to, reason, timeout)
    after
      timeout -> flunk("no scale event to #{to} (#{reason}) within #{timeout} ms")
    end
  end

  defp await_ready_workers(n) do
    assert AppPool.wait_until(fn -> length(Snakepit.list_workers()) == n end, 20_000) != :timeout
  end

  # `n` callers calling `tool` in a loop until `stop_load/1`.
  defp load(n, tool \\ "interval", args \\ %{ms: 20}), do: CallLoad.start(n, tool, args)
  defp stop_load(handle), do: CallLoad.stop(handle)

  defp worker_id_of(os_pid) do
    Enum.find_value(Snakepit.Pool.Registry.list_workers(), fn id ->
      case Snakepit.Pool.Registry.get_worker_metadata(id) do
        {:ok, %{os_pid: ^os_pid}} -> id
        _ -> nil
      end
    end)
  end

  test "grows while calls wait, up to max_workers, and no call fails" do
    start!(%{min_workers: 1, max_workers: 3, scale_down_after_ms: 60_000})
    listen([[:snakepit, :pool, :scale]])
    assert %{size: 1, min_workers: 1, max_workers: 3, workers: 1} = Snakepit.get_stats()

    handle = load(8, "interval", %{ms: 100})
    {_m, meta} = await_scale(3, :calls_waiting)
    assert meta.max == 3
    await_ready_workers(3)
    results = stop_load(handle)
    assert length(results) >= 8

    assert %{size: 3, workers: 3} = Snakepit.get_stats()
    # Never past max_workers.
    refute_received {:event, [:snakepit, :pool, :scale], %{to: 4}, _}
  end

  test "an idle pool shrinks back to min_workers after scale_down_after_ms" do
    start!(%{min_workers: 1, max_workers: 3, scale_down_after_ms: 1_500})
    listen([[:snakepit, :pool, :scale], [:snakepit, :pool, :worker, :retired]])

    # Within its range resize/2 sets the size; outside it is refused.
    assert {:error, %Snakepit.Error{category: :validation} = e} = Pool.resize(:default, 4)
    assert e.message =~ "1..3"
    assert {:error, %Snakepit.Error{category: :validation}} = Pool.resize(:default, 0)
    assert :ok = Pool.resize(:default, 3)
    await_scale(3, :resize)
    await_ready_workers(3)
    {:ok, _} = Snakepit.execute("interval", %{ms: 1})

    {measurements, _} = await_scale(1, :idle, 10_000)
    assert measurements.from == 3

    for _ <- 1..2 do
      assert_receive {:event, [:snakepit, :pool, :worker, :retired], _,
                      %{reason: :scale_down, pool: :default}},
                     10_000
    end

    await_ready_workers(1)
    assert %{size: 1, workers: 1} = Snakepit.get_stats()
    # The slot that stays is the lowest.
    assert {:ok, _} = Snakepit.execute("interval", %{ms: 1})

    snapshot = Snakepit.Status.snapshot()
    assert %{size: 1, min_workers: 1, max_workers: 3} = hd(snapshot.pools)
    assert Snakepit.Status.format(snapshot) =~ "size=1 (1..3)"
  end

  describe "resize/2 under load" do
    setup do
      # Session pins expire after 1 s unused, checked every 100 ms, so a
      # worker draining for a strict session stops within the test.
      Snakepit.Test.AppEnv.isolate([:session_default_ttl, :session_cleanup_interval])
      Application.put_env(:snakepit, :session_default_ttl, 1)
      Application.put_env(:snakepit, :session_cleanup_interval, 100)
    end

    defp pid_in(session) do
      {:ok, %{"pid" => pid}} =
        Snakepit.execute_in_session(session, "whoami", %{}, timeout: 30_000)

      pid
    end

    defp hold(dir, session \\ nil) do
      gate = Path.join(dir, "gate-#{System.unique_integer([:positive])}")
      started = gate <> ".started"
      on_exit(fn -> File.touch(gate) end)
      opts = [timeout: 60_000] ++ if(session, do: [session_id: session], else: [])

      task = Task.async(fn -> Snakepit.execute("hold", %{path: gate, started: started}, opts) end)
      assert AppPool.wait_until(fn -> File.exists?(started) end, 20_000) != :timeout
      pid = started |> File.read!() |> String.trim() |> String.to_integer()
      {task, gate, pid}
    end

    defp release({task, gate, _pid}) do
      File.touch!(gate)
      Task.await(task, 30_000)
    end

    test "calls in flight finish and strict sessions keep their worker", %{tmp_dir: dir} do
      start!(%{pool_size: 2, affinity: :strict_queue})
      listen([[:snakepit, :pool, :scale], [:snakepit, :pool, :worker, :retired]])

      # s1 is pinned to one worker; a call holds the other.
      a = pid_in("s1")
      held = hold(dir)
      assert elem(held, 2) != a
      background = load(2)

      # Shrinking chooses the busy worker without a strict session: it
      # drains its call, the session keeps its worker.
      assert :ok = Pool.resize(:default, 1)
      await_scale(1, :resize)
      assert pid_in("s1") == a
      refute_received {:event, [:snakepit, :pool, :worker, :retired], _, _}
      assert {:ok, %{"pid" => ^a}} = Snakepit.execute("whoami", %{})
      assert {:ok, %{"pid" => held_pid}} = release(held)
      assert held_pid == elem(held, 2)

      assert_receive {:event, [:snakepit, :pool, :worker, :retired], _, %{reason: :scale_down}},
                     10_000

      assert %{size: 1, min_workers: 1, max_workers: 1} = Snakepit.get_stats()

      # Back to two, with a strict session on each worker: s3 lands on the
      # worker s2 does not hold.
      assert :ok = Pool.resize(:default, 2)
      await_ready_workers(2)
      held_s2 = hold(dir, "s2")
      x = elem(held_s2, 2)
      y = pid_in("s3")
      assert y != x
      assert {:ok, _} = release(held_s2)

      # Shrinking drains one of them and keeps it for its session until the
      # session's pin expires; the other calls go to the worker that stays.
      assert :ok = Pool.resize(:default, 1)
      await_scale(1, :resize)

      [draining] =
        for %{state: :retiring, os_pid: pid} <- hd(Snakepit.Status.snapshot().pools).workers,
            do: pid

      {session, other} = if draining == x, do: {"s2", "s3"}, else: {"s3", "s2"}
      assert pid_in(session) == draining
      refute_receive {:event, [:snakepit, :pool, :worker, :retired], _, _}, 300
      assert pid_in(session) == draining
      assert pid_in(other) != draining

      assert_receive {:event, [:snakepit, :pool, :worker, :retired], _, %{reason: :scale_down}},
                     10_000

      await_ready_workers(1)
      stop_load(background)
    end

    test "through 3, 4, 2, 4, 1 with callers throughout: no call fails" do
      start!(%{pool_size: 2})
      listen([[:snakepit, :pool, :scale]])
      background = load(4)

      for n <- [3, 4, 2, 4, 1] do
        served = Snakepit.get_stats().requests
        assert :ok = Pool.resize(:default, n)
        await_scale(n, :resize)
        await_ready_workers(n)
        # Some calls at each size.
        assert AppPool.wait_until(fn -> Snakepit.get_stats().requests >= served + 8 end, 20_000) !=
                 :timeout
      end

      results = stop_load(background)
      assert length(results) >= 40
      assert %{size: 1, workers: 1, queued: 0, busy: 0} = Snakepit.get_stats()
    end
  end

  def slot_env(slot, tag), do: %{"SNAKEPIT_TEST_SLOT" => Integer.to_string(slot), "TAG" => tag}

  # slot => {os pid, env} of every ready worker (calls go to the least
  # recently used worker, so a few calls reach each one).
  defp envs(n) do
    names = ["SNAKEPIT_TEST_SLOT", "TAG", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"]

    Enum.reduce_while(1..(n * 10), %{}, fn _, acc ->
      {:ok, %{"pid" => pid, "env" => env}} = Snakepit.execute("whoami", %{names: names})
      acc = Map.put(acc, env["SNAKEPIT_TEST_SLOT"], {pid, env})
      if map_size(acc) == n, do: {:halt, acc}, else: {:cont, acc}
    end)
  end

  test "a worker's slot environment comes back after a kill and a recycle" do
    ExUnit.CaptureLog.capture_log(fn ->
      start!(%{pool_size: 2, worker_env: {__MODULE__, :slot_env, ["t"]}, devices: :per_worker})
    end)

    listen([[:snakepit, :worker, :initialized]])
    before = envs(2)
    assert Map.keys(before) |> Enum.sort() == ["0", "1"]

    for {_slot, {_pid, env}} <- before do
      assert env["TAG"] == "t"
      # No GPU here: devices: :per_worker sets nothing.
      assert env["CUDA_VISIBLE_DEVICES"] == System.get_env("CUDA_VISIBLE_DEVICES")
    end

    # Killed: its starter restarts it in the same slot.
    {pid1, _} = before["1"]
    id1 = worker_id_of(pid1)
    System.cmd("kill", ["-9", Integer.to_string(pid1)])
    assert_receive {:event, [:snakepit, :worker, :initialized], _, %{worker_id: ^id1}}, 20_000
    after_kill = envs(2)
    assert {new1, %{"SNAKEPIT_TEST_SLOT" => "1"}} = after_kill["1"]
    assert new1 != pid1
    assert after_kill["0"] == before["0"]

    # Recycled: the replacement (a new id) takes the slot.
    {pid0, _} = before["0"]
    id0 = worker_id_of(pid0)
    assert :ok = Pool.recycle_worker(Snakepit.Pool, :default, id0, :manual)
    assert AppPool.await_workers(2, without: [pid0], timeout: 20_000) != :timeout
    after_recycle = envs(2)
    assert {new0, %{"SNAKEPIT_TEST_SLOT" => "0", "TAG" => "t"}} = after_recycle["0"]
    assert new0 != pid0 and worker_id_of(new0) != id0
  end

  test "a worker_env that raises fails that slot's start with its message" do
    log =
      ExUnit.CaptureLog.capture_log(fn ->
        AppPool.restart(
          python_path: [AppPool.fixtures_dir()],
          pools: [
            %{
              name: :default,
              pool_size: 1,
              adapter_args: AppPool.fixture_adapter(),
              worker_env: {__MODULE__, :no_env, []}
            }
          ]
        )

        assert {:error, %Snakepit.Error{} = e} = Pool.await_ready(Snakepit.Pool, 20_000)
        assert inspect(e) =~ "worker_env Snakepit.Pool.ElasticTest.no_env/1 raised: no env here"
      end)

    assert log =~ "no env here"
  end

  def no_env(_slot), do: raise("no env here")
end
