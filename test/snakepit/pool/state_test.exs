defmodule Snakepit.Pool.StateTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.State

  defp pool(opts \\ []) do
    State.new(%{
      name: :p,
      pool_size: Keyword.get(opts, :size, 2),
      max_queue_size: Keyword.get(opts, :max_queue, 2)
    })
  end

  defp worker(id, capacity \\ 1), do: %{id: id, pid: self(), capacity: capacity}
  defp req(session \\ nil), do: %{ref: make_ref(), session_id: session}

  test "grants free slots, then queues, then refuses when the queue is full" do
    s = pool() |> State.add_worker(worker("w1"))
    {:granted, %{id: "w1"}, s} = State.checkout(s, req())
    {:queued, s} = State.checkout(s, req())
    {:queued, s} = State.checkout(s, req())
    assert {:error, :pool_saturated, s} = State.checkout(s, req())
    assert State.stats(s).pool_saturated == 1
    assert State.stats(s).queued == 2
  end

  test "checkin hands the slot to the oldest waiting request" do
    s = pool() |> State.add_worker(worker("w1"))
    first = req()
    {:granted, _, s} = State.checkout(s, first)
    older = req()
    newer = req()
    {:queued, s} = State.checkout(s, older)
    {:queued, s} = State.checkout(s, newer)
    {[{granted, %{id: "w1"}}], s} = State.checkin(s, first.ref)
    assert granted.ref == older.ref
    assert State.leased?(s, older.ref)
    refute State.leased?(s, newer.ref)
  end

  test "a worker of capacity n serves n requests at once" do
    s = pool() |> State.add_worker(worker("w1", 3))
    s = Enum.reduce(1..3, s, fn _, s -> elem(State.checkout(s, req()), 2) end)
    assert {:queued, _} = State.checkout(s, req())
    assert State.stats(s).busy == 1
  end

  test "a cancelled request is never granted and counts as a queue timeout" do
    s = pool() |> State.add_worker(worker("w1"))
    held = req()
    {:granted, _, s} = State.checkout(s, held)
    waiting = req()
    {:queued, s} = State.checkout(s, waiting)
    {:dropped, _, s} = State.cancel(s, waiting.ref, :timeout)
    assert {:not_queued, _} = State.cancel(s, waiting.ref, :timeout)
    {[], s} = State.checkin(s, held.ref)
    assert State.stats(s).queue_timeouts == 1
    assert State.stats(s).available == 1
  end

  test "session affinity prefers the session's last worker when it is free" do
    s = pool() |> State.add_worker(worker("w1")) |> State.add_worker(worker("w2"))
    first = req("s1")
    {:granted, %{id: id}, s} = State.checkout(s, first)
    {_, s} = State.checkin(s, first.ref)

    for _ <- 1..5, reduce: s do
      s ->
        r = req("s1")
        assert {:granted, %{id: ^id}, s} = State.checkout(s, r)
        {_, s} = State.checkin(s, r.ref)
        s
    end
  end

  test "removing a worker drops its slots and leases; a stale removal of a restarted worker is ignored" do
    s = pool() |> State.add_worker(worker("w1"))
    r = req()
    {:granted, _, s} = State.checkout(s, r)
    s = State.remove_worker(s, "w1")
    refute State.leased?(s, r.ref)
    assert State.stats(s).workers == 0

    old_pid = spawn(fn -> :ok end)
    s = State.add_worker(s, worker("w1"))
    assert State.remove_worker(s, "w1", old_pid).workers |> Map.has_key?("w1")
  end

  test "the pool fails only when every expected worker failed before any was ready" do
    s = pool(size: 2)
    s = State.worker_failed(s, "w1", :boom)
    assert s.status == :starting
    s = State.worker_failed(s, "w2", :boom)
    assert s.status == :failed
    assert {:error, :pool_failed, _} = State.checkout(s, req())

    ready = pool(size: 2) |> State.add_worker(worker("w1")) |> State.worker_failed("w2", :boom)
    assert ready.status == :ready
  end

  test "a re-added worker frees every slot once" do
    s = pool() |> State.add_worker(worker("w1", 2)) |> State.add_worker(worker("w1", 2))
    assert :queue.len(s.free) == 2
  end
end
