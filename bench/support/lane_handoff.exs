# A pool without a pool process, for bench/call_transport.exs to measure
# what the pool process costs per call: callers share a pool's lanes
# through ETS, and a caller whose call has just ended hands its lane to the
# oldest waiting caller itself, writing that caller's request (the native
# core sends the reply straight to it). Per call only the lane's reader and
# one caller run. Not part of Snakepit: no timeouts, sessions or crash
# handling, and every caller must stay alive until it is done.
#
# With `features: true` each call also does, in the leanest form we know,
# the per-call work Snakepit's documented API asks of any design: a
# correlation id sent in the request's metadata, a request id (to cancel
# it by), a deadline timer, a monitor (a crashed worker or caller must be
# noticed), the wait and run timings of get_stats, and the three telemetry
# events (`[:snakepit, :grpc_worker, :execute, :start | :stop]`,
# `[:snakepit, :request, :executed]`).
#
#     handoff = Bench.LaneHandoff.new([{lane_a, worker_pid_a}, ...], features: true)
#     Bench.LaneHandoff.calls(handoff, 1_000)   # in each of several callers

defmodule Bench.LaneHandoff do
  alias Snakepit.Pool.Timings
  alias Snakepit.Telemetry
  alias Snakepit.Telemetry.Correlation

  @bare %{timeout_ms: 0, request_id: nil, session_id: nil, metadata: nil, binary_parameters: nil}
  @budget_ms 60_000

  @doc "Shared state for callers of `lanes` ({lane, its worker's pid}): waiters, free lanes, the lane of each call."
  def new(lanes, opts \\ []) do
    handoff = %{
      waiting: :ets.new(:waiting, [:ordered_set, :public, write_concurrency: true]),
      free: :ets.new(:free, [:set, :public]),
      lane_of: :ets.new(:lane_of, [:set, :public, write_concurrency: true]),
      features: Keyword.get(opts, :features, false),
      timings: Timings.new()
    }

    for lane <- lanes, do: :ets.insert(handoff.free, {lane})
    handoff
  end

  @doc "Makes `n` calls of `add` from the calling process, queueing for a lane before each."
  def calls(handoff, n) when n > 0, do: await(handoff, wait_for_lane(handoff, true), n)

  defp await(handoff, call, n) do
    held = receive_reply(handoff, call)

    if n == 1 do
      give(handoff, held)
    else
      # Queue first, then hand the lane on: the oldest waiter gets it.
      next = wait_for_lane(handoff, false)
      give(handoff, held)
      await(handoff, next, n - 1)
    end
  end

  defp receive_reply(%{features: false} = handoff, {ref, _, _}) do
    receive do
      {^ref, {:ok, _}} -> :ok
    end

    [{_, held}] = :ets.take(handoff.lane_of, ref)
    held
  end

  defp receive_reply(handoff, {ref, opts, queued_at}) do
    receive do
      {^ref, {:ok, _}} -> :ok
    after
      @budget_ms -> exit(:deadline)
    end

    [{_, {_lane, worker} = held, started_at}] = :ets.take(handoff.lane_of, ref)
    mon = Process.monitor(worker)
    Process.demonitor(mon, [:flush])
    now = System.monotonic_time()
    Timings.record(handoff.timings, :wait, started_at - queued_at)
    Timings.record(handoff.timings, :run, now - started_at)
    cid = opts.metadata["correlation_id"]
    meta = %{command: "add", worker_id: "w", transport: :lane, correlation_id: cid}

    Telemetry.emit(
      [:snakepit, :grpc_worker, :execute, :stop],
      %{duration: now - started_at},
      meta
    )

    Telemetry.emit([:snakepit, :request, :executed], %{duration_us: now - queued_at}, %{
      pool: :default,
      worker_id: "w",
      command: "add",
      success: true,
      correlation_id: cid,
      node: node()
    })

    held
  end

  defp wait_for_lane(handoff, grab?) do
    ref = make_ref()
    opts = request_opts(handoff.features)
    queued_at = System.monotonic_time()
    :ets.insert(handoff.waiting, {System.unique_integer([:monotonic]), self(), ref, opts})
    if grab?, do: grab(handoff)
    {ref, opts, queued_at}
  end

  defp request_opts(false), do: @bare

  defp request_opts(true) do
    cid = Correlation.new_id()

    Telemetry.emit(
      [:snakepit, :grpc_worker, :execute, :start],
      %{system_time: System.system_time()},
      %{command: "add", worker_id: nil, transport: :lane, correlation_id: cid}
    )

    %{
      @bare
      | timeout_ms: @budget_ms,
        request_id: Integer.to_string(System.unique_integer([:positive])),
        metadata: %{"correlation_id" => cid}
    }
  end

  # A lane that found no waiter is freed, and the queue looked at again: a
  # caller may have queued after the look and before the lane was free.
  defp give(handoff, {lane, _worker} = held) do
    case pop(handoff.waiting) do
      {pid, ref, opts} ->
        record = if handoff.features, do: {ref, held, System.monotonic_time()}, else: {ref, held}
        :ets.insert(handoff.lane_of, record)
        {:ok, _} = Snakepit.Native.lane_execute(lane, pid, ref, "add", %{a: 1, b: 2}, opts)

      nil ->
        :ets.insert(handoff.free, {held})
        if :ets.first(handoff.waiting) != :"$end_of_table", do: grab(handoff)
    end
  end

  defp grab(handoff) do
    case :ets.first(handoff.free) do
      :"$end_of_table" ->
        :ok

      held ->
        if :ets.take(handoff.free, held) != [], do: give(handoff, held), else: grab(handoff)
    end
  end

  defp pop(waiting) do
    case :ets.first(waiting) do
      :"$end_of_table" ->
        nil

      key ->
        case :ets.take(waiting, key) do
          [{_, pid, ref, opts}] -> {pid, ref, opts}
          [] -> pop(waiting)
        end
    end
  end
end
