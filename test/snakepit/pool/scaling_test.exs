defmodule Snakepit.Pool.ScalingTest do
  use ExUnit.Case, async: true

  alias Snakepit.Pool.{Runtime, Scaling}

  doctest Scaling

  describe "grow_to/1" do
    defp load(overrides) do
      Map.merge(
        %{
          size: 1,
          max: 4,
          queued: 10,
          busy: 1,
          capacity: 1,
          ready_slots: 1,
          run_ms: 50,
          start_ms: 300,
          backlog_ms: 0
        },
        Map.new(overrides)
      )
    end

    test "grows at once to what would serve every busy and queued call, capped at max" do
      assert Scaling.grow_to(load(queued: 2, busy: 1, run_ms: 500)) == 3
      assert Scaling.grow_to(load(queued: 31)) == 4
      # Thread workers: ten slots each.
      assert Scaling.grow_to(
               load(capacity: 10, busy: 10, ready_slots: 10, queued: 15, run_ms: 500)
             ) == 3
    end

    test "never without waiting calls, past max, or below the current size" do
      assert Scaling.grow_to(load(queued: 0)) == 1
      assert Scaling.grow_to(load(size: 4, queued: 100)) == 4
      assert Scaling.grow_to(load(size: 3, max: 8, queued: 1, busy: 1, run_ms: 1_000)) == 3
    end

    test "not when the queue clears before a new worker could be ready" do
      # (5 / 1 + 0.5) * 50 ms = 275 ms < 300 ms to start a worker.
      assert Scaling.grow_to(load(queued: 5)) == 1
      assert Scaling.grow_to(load(queued: 5, backlog_ms: 299)) == 1
      assert Scaling.grow_to(load(queued: 6)) == 4
    end

    test "a standing queue grows the pool though each call's wait is short" do
      # Calls leave as fast as they come: the queue has not emptied for as
      # long as a worker takes to start.
      assert Scaling.grow_to(load(queued: 2, busy: 1, backlog_ms: 300)) == 3
    end

    test "without measurements, or without a ready worker, waiting calls are reason enough" do
      assert Scaling.grow_to(load(queued: 1, run_ms: nil)) == 2
      assert Scaling.grow_to(load(queued: 1, start_ms: nil)) == 2
      assert Scaling.grow_to(load(queued: 1, ready_slots: 0, busy: 0)) == 1
      assert Scaling.grow_to(load(queued: 3, ready_slots: 0, busy: 0, size: 1)) == 3
    end
  end

  describe "victims/3" do
    defp c(id, fields),
      do: Map.merge(%{id: id, ready: true, load: 0, pinned: false, slot: 0}, fields)

    test "not ready first, then idle unpinned by highest slot, then busy; pinned last or never" do
      candidates = [
        c("pinned", %{slot: 5, pinned: true}),
        c("busy", %{slot: 4, load: 1}),
        c("idle_low", %{slot: 1}),
        c("idle_high", %{slot: 3}),
        c("starting", %{ready: false, slot: 0})
      ]

      assert Scaling.victims(candidates, 5, true) ==
               ["starting", "idle_high", "idle_low", "busy", "pinned"]

      assert Scaling.victims(candidates, 5, false) == [
               "starting",
               "idle_high",
               "idle_low",
               "busy"
             ]

      assert Scaling.victims(candidates, 2, false) == ["starting", "idle_high"]
      assert Scaling.victims(candidates, 0, true) == []
    end
  end

  describe "Runtime members and slots" do
    defp rt(size),
      do: Runtime.new(Snakepit.Config.normalize_pool_config(%{name: :p, pool_size: size}))

    test "a pool starts with slots 0..size-1; growth takes the lowest free slot" do
      rt = rt(3)
      assert Enum.map(1..3, &Runtime.slot_index(rt, "p_worker_#{&1}")) == [0, 1, 2]

      rt = rt |> Runtime.leave("p_worker_2") |> Runtime.stopped("p_worker_2")
      refute Runtime.member?(rt, "p_worker_2")
      assert {["p_worker_4", "p_worker_5"], rt} = Runtime.grow(rt, :p, 2)
      assert Runtime.slot_index(rt, "p_worker_4") == 1
      assert Runtime.slot_index(rt, "p_worker_5") == 3
      assert MapSet.size(rt.members) == 4
    end

    test "a replacement takes the slot, and the place, of the worker it replaces" do
      rt = rt(2)
      assert {:ok, "p_worker_3", rt} = Runtime.begin_recycle(rt, :p, "p_worker_2", :manual)
      assert Runtime.slot_index(rt, "p_worker_3") == 1
      assert Runtime.recycling?(rt, "p_worker_2")
      # The old one counts until its replacement is ready.
      assert Runtime.member?(rt, "p_worker_2") and not Runtime.member?(rt, "p_worker_3")

      {{"p_worker_2", :manual}, rt} = Runtime.replacement_ready(rt, "p_worker_3")
      assert Runtime.member?(rt, "p_worker_3") and not Runtime.member?(rt, "p_worker_2")
      rt = Runtime.stopped(rt, "p_worker_2")
      assert Runtime.slot_index(rt, "p_worker_3") == 1
    end

    test "a failed replacement gives the slot back to the worker it was to replace" do
      rt = rt(1)
      {:ok, new, rt} = Runtime.begin_recycle(rt, :p, "p_worker_1", :manual)
      {{"p_worker_1", :manual}, rt} = Runtime.replacement_failed(rt, new)
      assert Runtime.slot_index(rt, new) == nil
      assert Runtime.member?(rt, "p_worker_1") and not Runtime.retiring?(rt, "p_worker_1")
    end

    test "resize of a fixed pool moves its range; of an elastic one, only its size" do
      assert %{size: 5, min: 5, max: 5} = Runtime.resize(rt(2), 5)

      elastic =
        Runtime.new(
          Snakepit.Config.normalize_pool_config(%{name: :p, min_workers: 1, max_workers: 4})
        )

      assert %{size: 3, min: 1, max: 4} = Runtime.resize(elastic, 3)
    end

    test "start times feed the estimate of how long a worker takes to be ready" do
      # The first workers' starts include the fork server's: no samples.
      rt = rt(1) |> Runtime.started("p_worker_1", 0) |> Runtime.ready("p_worker_1", 3_000)
      assert rt.start_ms == nil
      rt = rt |> Runtime.started("a", 0) |> Runtime.ready("a", 400)
      assert rt.start_ms == 400.0
      rt = rt |> Runtime.started("b", 1_000) |> Runtime.ready("b", 1_200)
      assert rt.start_ms == 350.0
      # A worker the pool did not start (its starter restarted it) is no sample.
      assert Runtime.ready(rt, "c", 5_000).start_ms == 350.0
    end
  end
end
