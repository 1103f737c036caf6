defmodule Snakepit.Pool.StateTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.{Draining, State, Stats}

  defp pool(opts \\ []) do
    tainted = Keyword.get(opts, :tainted, [])

    State.new(
      %{
        name: :p,
        pool_size: Keyword.get(opts, :size, 2),
        max_queue_size: Keyword.get(opts, :max_queue, 2),
        affinity: Keyword.get(opts, :affinity, :hint)
      },
      tainted?: &(&1 in tainted)
    )
  end

  defp worker(id, capacity \\ 1), do: %{id: id, pid: spawn(fn -> :ok end), capacity: capacity}

  defp req(session \\ nil, extra \\ %{}),
    do: Map.merge(%{ref: make_ref(), session_id: session}, extra)

  defp two_workers(opts \\ []),
    do: pool(opts) |> State.add_worker(worker("w1")) |> State.add_worker(worker("w2"))

  defp granted!(s, r) do
    assert {:granted, w, s} = State.checkout(s, r)
    {w.id, s}
  end

  defp done(s, r) do
    {actions, s} = State.checkin(s, r.ref)
    {actions, s}
  end

  describe "slots and queue" do
    test "grants free slots, then queues, then refuses when the queue is full" do
      s = pool() |> State.add_worker(worker("w1"))
      {"w1", s} = granted!(s, req())
      {:queued, s} = State.checkout(s, req())
      {:queued, s} = State.checkout(s, req())
      assert {:error, :pool_saturated, s} = State.checkout(s, req())
      assert Stats.pool(s).pool_saturated == 1
      assert Stats.pool(s).queued == 2
    end

    test "a queue bound of zero refuses at once when no slot is free" do
      s = pool(max_queue: 0) |> State.add_worker(worker("w1"))
      {"w1", s} = granted!(s, req())
      assert {:error, :pool_saturated, _} = State.checkout(s, req())
    end

    test "checkin hands the slot to the oldest waiting request" do
      s = pool() |> State.add_worker(worker("w1"))
      first = req()
      {_, s} = granted!(s, first)
      older = req()
      newer = req()
      {:queued, s} = State.checkout(s, older)
      {:queued, s} = State.checkout(s, newer)
      {[{:grant, granted, %{id: "w1"}}], s} = done(s, first)
      assert granted.ref == older.ref
      assert State.leased?(s, older.ref)
      refute State.leased?(s, newer.ref)
    end

    test "a worker of capacity n serves n requests at once" do
      s = pool() |> State.add_worker(worker("w1", 3))
      s = Enum.reduce(1..3, s, fn _, s -> elem(State.checkout(s, req()), 2) end)
      assert {:queued, _} = State.checkout(s, req())
      assert Stats.pool(s).busy == 1
    end

    test "slots go to the least recently used worker" do
      s = two_workers()
      a = req()
      {"w1", s} = granted!(s, a)
      {_, s} = done(s, a)
      assert {"w2", _} = granted!(s, req())
    end

    test "a cancelled request is never granted and counts as a queue timeout" do
      s = pool() |> State.add_worker(worker("w1"))
      held = req()
      {_, s} = granted!(s, held)
      waiting = req()
      {:queued, s} = State.checkout(s, waiting)
      {:dropped, _, s} = State.cancel(s, waiting.ref, :timeout)
      assert {:not_queued, _} = State.cancel(s, waiting.ref, :timeout)
      {[], s} = done(s, held)
      assert Stats.pool(s).queue_timeouts == 1
      assert Stats.pool(s).available == 1
    end

    test "a caller that goes away while queued is dropped without counting a timeout" do
      s = pool() |> State.add_worker(worker("w1"))
      {_, s} = granted!(s, req())
      waiting = req()
      {:queued, s} = State.checkout(s, waiting)
      {:dropped, _, s} = State.cancel(s, waiting.ref, :caller_down)
      assert Stats.pool(s).queue_timeouts == 0
      assert Stats.pool(s).queued == 0
    end

    test "errors are counted at checkin" do
      s = pool() |> State.add_worker(worker("w1"))
      r = req()
      {_, s} = granted!(s, r)
      {_, s} = State.checkin(s, r.ref, :error)
      assert %{requests: 1, errors: 1} = Stats.pool(s)
    end
  end

  describe "workers" do
    test "removing a worker drops its slots and leases; a stale removal of a restarted worker is ignored" do
      s = pool() |> State.add_worker(worker("w1"))
      r = req()
      {_, s} = granted!(s, r)
      {[], s} = State.remove_worker(s, "w1")
      refute State.leased?(s, r.ref)
      assert Stats.pool(s).workers == 0

      old_pid = spawn(fn -> :ok end)
      s = State.add_worker(s, worker("w1"))
      {[], s} = State.remove_worker(s, "w1", old_pid)
      assert Map.has_key?(s.workers, "w1")
    end

    test "the pool fails only when every expected worker failed before any was ready" do
      s = pool(size: 2)
      {[], s} = State.worker_failed(s, "w1", :boom)
      assert s.status == :starting
      refute State.init_complete?(s)
      {[], s} = State.worker_failed(s, "w2", :boom)
      assert s.status == :failed
      assert State.init_complete?(s)
      assert {:error, :pool_failed, _} = State.checkout(s, req())

      {[], ready} =
        pool(size: 2) |> State.add_worker(worker("w1")) |> State.worker_failed("w2", :boom)

      assert ready.status == :ready
      assert State.init_complete?(ready)
    end

    test "a failed pool is ready again as soon as one slot's restart works" do
      {_, s} = State.worker_failed(pool(size: 2), "w1", :boom)
      {_, s} = State.worker_failed(s, "w2", :boom)
      assert s.status == :failed
      s = State.add_worker(s, worker("w2"))
      assert s.status == :ready
      assert {:granted, %{id: "w2"}, s} = State.checkout(s, req())

      assert %{slots_down: 1, down: %{"w1" => %{status: :failing, reason: ":boom"}}} =
               Stats.pool(s)
    end

    test "with no worker ready, requests queue while a slot restarts after a crash" do
      s = pool(size: 2) |> State.add_worker(worker("w1")) |> State.add_worker(worker("w2"))
      {[], s} = State.worker_crashed(s, "w1", nil, :killed)
      {[], s} = State.worker_crashed(s, "w2", nil, :killed)
      assert s.status == :recovering
      assert {:queued, s} = State.checkout(s, req())
      assert %{slots_down: 2, queued: 1} = Stats.pool(s)
    end

    test "queued requests are refused at once when the last restarting slot fails on its own" do
      s = pool(size: 2) |> State.add_worker(worker("w1")) |> State.add_worker(worker("w2"))
      {[], s} = State.worker_crashed(s, "w1", nil, :killed)
      {[], s} = State.worker_crashed(s, "w2", nil, :killed)
      {:queued, s} = State.checkout(s, r = req())
      {[], s} = State.worker_failed(s, "w1", :import_error)
      # w2 is still expected back: the request keeps waiting.
      assert s.status == :recovering
      assert {[{:reject, ^r, :pool_failed}], s} = State.worker_failed(s, "w2", :import_error)
      assert s.status == :failed
      assert Stats.pool(s).queued == 0
    end

    test "a slot killed from outside while starting is expected back; stats show its restart" do
      {[], s} = State.worker_failed(pool(size: 1), "w1", :killed, false)
      assert s.status == :starting
      s = State.worker_restarting(s, "w1", %{failures: 2, delay_ms: 100})
      assert {:queued, s} = State.checkout(s, req())

      assert %{down: %{"w1" => %{status: :restarting, failures: 2, retry_in_ms: 100}}} =
               Stats.pool(s)
    end

    test "a crash of an older process of a restarted worker changes nothing" do
      s = pool(size: 1) |> State.add_worker(worker("w1"))
      assert {[], ^s} = State.worker_crashed(s, "w1", spawn(fn -> :ok end), :killed)
    end

    test "a re-added worker frees every slot once" do
      s = pool() |> State.add_worker(worker("w1", 2)) |> State.add_worker(worker("w1", 2))
      assert :queue.len(s.free) == 2
    end
  end

  describe "affinity :hint" do
    test "prefers the session's last worker when it is free" do
      s = two_workers()
      first = req("s1")
      {id, s} = granted!(s, first)
      {_, s} = done(s, first)

      for _ <- 1..5, reduce: s do
        s ->
          r = req("s1")
          assert {^id, s} = granted!(s, r)
          {_, s} = done(s, r)
          s
      end
    end

    test "falls back to another worker when the session's worker is busy, and moves the session" do
      s = two_workers()
      {"w1", s} = granted!(s, req("s1"))
      assert {"w2", s} = granted!(s, req("s1"))
      assert State.session_worker(s, "s1") == "w2"
    end

    test "a session whose worker died goes to any worker" do
      s = two_workers()
      r = req("s1")
      {"w1", s} = granted!(s, r)
      {_, s} = State.remove_worker(s, "w1")
      assert {"w2", _} = granted!(s, req("s1"))
    end

    test "the session store's pin counts when the pool has no pin of its own" do
      s = two_workers()
      assert {"w2", _} = granted!(s, req("s9", %{stored_worker: "w2"}))
      assert {"w1", _} = granted!(s, req("s9", %{stored_worker: "other_pool_worker_1"}))
    end
  end

  describe "affinity :strict_queue" do
    test "waits for the session's worker while others go ahead" do
      s = two_workers(affinity: :strict_queue)
      pinned = req("s1")
      {"w1", s} = granted!(s, pinned)
      {_, s} = done(s, pinned)

      busy = req(nil, %{avoid: ["w2"]})
      {"w1", s} = granted!(s, busy)
      # w2 is free, but the session waits for w1.
      waiting = req("s1")
      assert {:queued, s} = State.checkout(s, waiting)
      # An unpinned request behind it is not held up.
      assert {"w2", s} = granted!(s, req())
      {[{:grant, granted, %{id: "w1"}}], _} = done(s, busy)
      assert granted.ref == waiting.ref
    end

    test "a slot freed on another worker skips the pinned request and serves a younger one" do
      s = two_workers(affinity: :strict_queue)
      {"w1", s} = granted!(s, req("s1"))
      other = req()
      {"w2", s} = granted!(s, other)
      pinned = req("s1")
      {:queued, s} = State.checkout(s, pinned)
      younger = req()
      {:queued, s} = State.checkout(s, younger)
      {[{:grant, granted, %{id: "w2"}}], s} = done(s, other)
      assert granted.ref == younger.ref
      assert [^pinned] = Map.values(s.waiting)
    end

    test "a queued request whose worker dies is rejected as :session_worker_unavailable" do
      s = two_workers(affinity: :strict_queue)
      {"w1", s} = granted!(s, req("s1"))
      waiting = req("s1")
      {:queued, s} = State.checkout(s, waiting)
      {[{:reject, rejected, :session_worker_unavailable}], s} = State.remove_worker(s, "w1")
      assert rejected.ref == waiting.ref
      assert Stats.pool(s).queued == 0
    end

    test "a worker restarted under the same id lost the session: one error, then a new pin" do
      s = two_workers(affinity: :strict_queue)
      r = req("s1")
      {"w1", s} = granted!(s, r)
      {_, s} = done(s, r)
      {_, s} = State.remove_worker(s, "w1")
      s = State.add_worker(s, worker("w1"))
      assert {:error, :session_worker_unavailable, s} = State.checkout(s, req("s1"))
      assert {_, _} = granted!(s, req("s1"))
    end

    test "per-request affinity overrides the pool's" do
      s = two_workers(affinity: :hint)
      {"w1", s} = granted!(s, req("s1"))
      assert {:queued, _} = State.checkout(s, req("s1", %{affinity: :strict_queue}))
    end
  end

  describe "affinity :strict_fail_fast" do
    test "fails at once with :worker_busy when the session's worker is busy" do
      s = two_workers(affinity: :strict_fail_fast)
      {"w1", s} = granted!(s, req("s1"))
      assert {:error, :worker_busy, s} = State.checkout(s, req("s1"))
      assert Stats.pool(s).queued == 0
      # Without a session the free worker serves.
      assert {"w2", _} = granted!(s, req())
    end

    test "a session whose worker is gone gets :session_worker_unavailable" do
      s = two_workers(affinity: :strict_fail_fast)
      {"w1", s} = granted!(s, req("s1"))
      {_, s} = State.remove_worker(s, "w1")
      assert {:error, :session_worker_unavailable, _} = State.checkout(s, req("s1"))
    end
  end

  describe "taints and avoidance" do
    test "a tainted worker is passed over while another is free" do
      s = two_workers(tainted: ["w1"])
      a = req()
      assert {"w2", s} = granted!(s, a)
      {_, s} = done(s, a)
      assert {"w2", _} = granted!(s, req())
    end

    test "a tainted worker still serves when it is the only free one" do
      s = two_workers(tainted: ["w1"])
      {"w2", s} = granted!(s, req())
      assert {"w1", _} = granted!(s, req())
    end

    test "a hint session avoids its tainted worker; untainting restores it" do
      s = two_workers()
      r = req("s1")
      {"w1", s} = granted!(s, r)
      {_, s} = done(s, r)
      tainted = %{s | tainted?: &(&1 == "w1")}
      assert {"w2", _} = granted!(tainted, req("s1"))
      assert {"w1", _} = granted!(%{tainted | tainted?: fn _ -> false end}, req("s1"))
    end

    test "a retry avoids the workers it lists" do
      s = two_workers()
      assert {"w2", _} = granted!(s, req(nil, %{avoid: ["w1"]}))
    end
  end

  describe "retiring" do
    test "an idle worker retires at once" do
      s = two_workers()
      {[{:stop_worker, %{id: "w1"}}], s} = Draining.retire(s, "w1")
      assert Map.keys(s.workers) == ["w2"]
    end

    test "a busy worker takes no new requests and retires when its last request ends" do
      s = two_workers()
      r = req()
      {"w1", s} = granted!(s, r)
      {[], s} = Draining.retire(s, "w1")
      assert {"w2", s} = granted!(s, req())
      assert {:queued, s} = State.checkout(s, req())
      {actions, s} = done(s, r)
      assert [{:stop_worker, %{id: "w1"}}] = actions
      refute Map.has_key?(s.workers, "w1")
    end

    test "strict sessions pinned to a retiring worker keep it until it retires" do
      s = two_workers(affinity: :strict_queue)
      r = req("s1")
      {"w1", s} = granted!(s, r)
      {[], s} = Draining.retire(s, "w1")
      {[{:stop_worker, _}], s} = done(s, r)
      assert {:error, :session_worker_unavailable, _} = State.checkout(s, req("s1"))

      s = two_workers(affinity: :strict_queue)
      {"w1", s} = granted!(s, req("s1"))
      other = req()
      {"w2", s} = granted!(s, other)
      {[], s} = Draining.retire(s, "w1")
      # Retiring but busy: the session waits for it, as before.
      assert {:queued, _} = State.checkout(s, req("s1"))
    end
  end

  describe "draining to shrink (drain: :sessions)" do
    test "an idle worker without strict sessions stops at once" do
      s = two_workers(affinity: :strict_queue)

      assert {[{:stop_worker, %{id: "w1", drain: :sessions}}], s} =
               Draining.retire(s, "w1", :sessions)

      refute Map.has_key?(s.workers, "w1")
    end

    test "a worker with a call in flight stops when the call is done" do
      s = two_workers()
      r = req()
      {"w1", s} = granted!(s, r)
      {[], s} = Draining.retire(s, "w1", :sessions)
      # No new calls go there meanwhile.
      {"w2", s} = granted!(s, req())
      assert {:queued, s} = State.checkout(s, req())
      {actions, _s} = done(s, r)
      assert [{:stop_worker, %{id: "w1"}}] = actions
    end

    test "a worker with a strict session pinned keeps serving it until the pin expires" do
      s = two_workers(affinity: :strict_queue)
      pinned = req("s1", %{now: 10})
      {"w1", s} = granted!(s, pinned)
      {[], s} = done(s, pinned)
      assert Draining.strict_pinned?(s, "w1")

      assert {[], s} = Draining.retire(s, "w1", :sessions)
      assert s.workers["w1"].status == :retiring

      # The session still reaches its worker; others do not.
      again = req("s1", %{now: 20})
      assert {"w1", s} = granted!(s, again)
      assert {"w2", s} = granted!(s, req())
      assert {[], s} = done(s, again)
      assert {[], s} = Draining.stop_drained(s)

      # The pin expires: the worker stops.
      s = State.prune_sessions(s, 30)
      assert {[{:stop_worker, %{id: "w1"}}], s} = Draining.stop_drained(s)
      refute Map.has_key?(s.workers, "w1")
    end

    test "hint sessions do not hold a draining worker" do
      s = two_workers(affinity: :hint)
      r = req("s1")
      {"w1", s} = granted!(s, r)
      {[], s} = done(s, r)
      refute Draining.strict_pinned?(s, "w1")
      assert {[{:stop_worker, %{id: "w1"}}], _} = Draining.retire(s, "w1", :sessions)
    end

    test "a recycle (drain: :calls) does not wait for strict sessions" do
      s = two_workers(affinity: :strict_queue)
      r = req("s1")
      {"w1", s} = granted!(s, r)
      {[], s} = done(s, r)
      assert {[{:stop_worker, %{id: "w1"}}], _} = Draining.retire(s, "w1")
    end
  end

  describe "demand" do
    defp clocked(now_ref) do
      State.new(%{name: :p, pool_size: 2, max_queue_size: 10, affinity: :hint},
        tainted?: fn _ -> false end,
        clock: fn -> :counters.get(now_ref, 1) end
      )
    end

    test "grants record busy slots, queued calls what would have been needed" do
      now = :counters.new(1, [])
      s = clocked(now) |> State.add_worker(worker("w1")) |> State.add_worker(worker("w2"))
      :counters.put(now, 1, 100)
      a = req()
      {_, s} = granted!(s, a)
      :counters.put(now, 1, 200)
      b = req()
      {_, s} = granted!(s, b)
      assert State.busy(s) == 2
      :counters.put(now, 1, 300)
      {:queued, s} = State.checkout(s, req())
      {:queued, s} = State.checkout(s, req())
      assert State.demand(s, 0) == 4
      assert State.demand(s, 301) == 0
      assert State.demand(s, 150) == 4

      # The freed slot goes to a queued call at once: 2 busy again, at 300.
      {[{:grant, _, _}], s} = done(s, a)
      assert State.busy(s) == 2
      # A removed worker takes its leases with it.
      {_, s} = State.remove_worker(s, "w2")
      assert State.busy(s) == 1
      assert State.forget_demand(s, 250).demand |> Map.keys() |> Enum.sort() == [2, 3, 4]
      assert State.forget_demand(s, 301).demand == %{}
    end

    test "the backlog counts from when the queue last stopped being empty" do
      now = :counters.new(1, [])
      s = clocked(now) |> State.add_worker(worker("w1"))
      assert State.backlog_ms(s) == 0
      a = req()
      {_, s} = granted!(s, a)
      :counters.put(now, 1, 100)
      {:queued, s} = State.checkout(s, b = req())
      :counters.put(now, 1, 150)
      {:queued, s} = State.checkout(s, req())
      :counters.put(now, 1, 400)
      assert State.backlog_ms(s) == 300
      # A call leaves, another waits: still standing.
      {[{:grant, _, _}], s} = done(s, a)
      assert State.backlog_ms(s) == 300
      {[{:grant, _, _}], s} = done(s, b)
      assert State.backlog_ms(s) == 0
    end
  end

  test "session pins unused since a time are pruned" do
    s = two_workers()
    {_, s} = granted!(s, req("old", %{now: 10}))
    {_, s} = granted!(s, req("new", %{now: 100}))
    s = State.prune_sessions(s, 50)
    assert State.session_worker(s, "old") == nil
    assert State.session_worker(s, "new") != nil
  end
end
