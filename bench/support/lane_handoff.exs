# A pool without a pool process, for bench/call_transport.exs to measure
# what the pool process costs per call: callers share a pool's lanes
# through ETS, and a caller whose call has just ended hands its lane to the
# oldest waiting caller itself, writing that caller's request (the native
# core sends the reply straight to it). Per call only the lane's reader and
# one caller run. Not part of Snakepit: no timeouts, sessions or crash
# handling, and every caller must stay alive until it is done.
#
#     handoff = Bench.LaneHandoff.new([lane_a, lane_b])
#     Bench.LaneHandoff.calls(handoff, 1_000)   # in each of several callers

defmodule Bench.LaneHandoff do
  @opts %{timeout_ms: 0, request_id: nil, session_id: nil, metadata: nil, binary_parameters: nil}

  @doc "Shared state for callers of `lanes`: waiting callers, free lanes, the lane of each call."
  def new(lanes) do
    handoff = %{
      waiting: :ets.new(:waiting, [:ordered_set, :public, write_concurrency: true]),
      free: :ets.new(:free, [:set, :public]),
      lane_of: :ets.new(:lane_of, [:set, :public, write_concurrency: true])
    }

    for lane <- lanes, do: :ets.insert(handoff.free, {lane})
    handoff
  end

  @doc "Makes `n` calls of `add` from the calling process, queueing for a lane before each."
  def calls(handoff, n) when n > 0, do: await(handoff, wait_for_lane(handoff, true), n)

  defp await(handoff, ref, n) do
    receive do
      {^ref, {:ok, _}} -> :ok
    end

    [{_, lane}] = :ets.take(handoff.lane_of, ref)

    if n == 1 do
      give(handoff, lane)
    else
      # Queue first, then hand the lane on: the oldest waiter gets it.
      next = wait_for_lane(handoff, false)
      give(handoff, lane)
      await(handoff, next, n - 1)
    end
  end

  defp wait_for_lane(handoff, grab?) do
    ref = make_ref()
    :ets.insert(handoff.waiting, {System.unique_integer([:monotonic]), self(), ref})
    if grab?, do: grab(handoff)
    ref
  end

  # A lane that found no waiter is freed, and the queue looked at again: a
  # caller may have queued after the look and before the lane was free.
  defp give(handoff, lane) do
    case pop(handoff.waiting) do
      {pid, ref} ->
        :ets.insert(handoff.lane_of, {ref, lane})
        {:ok, _} = Snakepit.Native.lane_execute(lane, pid, ref, "add", %{a: 1, b: 2}, @opts)

      nil ->
        :ets.insert(handoff.free, {lane})
        if :ets.first(handoff.waiting) != :"$end_of_table", do: grab(handoff)
    end
  end

  defp grab(handoff) do
    case :ets.first(handoff.free) do
      :"$end_of_table" ->
        :ok

      lane ->
        if :ets.take(handoff.free, lane) != [], do: give(handoff, lane), else: grab(handoff)
    end
  end

  defp pop(waiting) do
    case :ets.first(waiting) do
      :"$end_of_table" ->
        nil

      key ->
        case :ets.take(waiting, key) do
          [{_, pid, ref}] -> {pid, ref}
          [] -> pop(waiting)
        end
    end
  end
end
