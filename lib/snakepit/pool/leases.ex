defmodule Snakepit.Pool.Leases do
  @moduledoc """
  Leases of worker slots, on the pool process's state (see
  `Snakepit.Pool.Server`): answering a checkout (granted, queued with a
  timer, refused), carrying out `Snakepit.Pool.State`'s actions, check-ins,
  callers that die, and stopping a call that may still run in its worker
  (CancelTool, then a hard stop after `cancel_grace_ms`) before its slot is
  reused.
  """

  alias Snakepit.{Defaults, GRPCWorker, Native, Telemetry}
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.Pool.{Call, Deadline, Errors, Restart, Runtime, Server, Slots, State}
  alias Snakepit.Worker.LifecycleManager

  @doc false
  def lease(state, request, worker) do
    %{crash_barrier: crash_barrier, timings: timings} = Map.fetch!(state.runtime, request.pool)

    %{
      ref: request.ref,
      request_id: request.request_id,
      pool: request.pool,
      pool_pid: self(),
      worker: worker,
      crash_barrier: crash_barrier,
      timings: timings
    }
  end

  @doc false
  # The session store remembers the worker of each session, so affinity
  # survives pool restarts; written only when the worker changes.
  def note_session(%{session_id: nil}, _worker), do: :ok
  def note_session(%{stored_worker: id}, %{id: id}), do: :ok

  def note_session(%{session_id: session}, worker),
    do: SessionStore.store_worker_session(session, worker.id)

  @doc false
  def schedule_queue_timeout(request, pool) do
    cap = Deadline.earliest(pool.config.queue_timeout, request.queue_cap)
    patience = State.patience(pool, request)

    case {Deadline.queue_timeout(request.deadline, cap), patience} do
      {:infinity, :infinity} ->
        nil

      {ms, patience} when patience < ms ->
        # It could no longer finish in time before its queue time is up.
        Process.send_after(self(), {:doomed, request.pool, request.ref}, patience)

      {ms, _} ->
        Process.send_after(self(), {:queue_timeout, request.pool, request.ref, ms}, ms)
    end
  end

  @doc false
  # A request that leaves the queue early no longer needs its timer.
  def cancel_queue_timer(%{timer: timer}) when is_reference(timer),
    do: :erlang.cancel_timer(timer, async: true, info: false)

  def cancel_queue_timer(_request), do: :ok

  @doc false
  def perform(state, name, actions) do
    Enum.reduce(actions, state, fn
      {:grant, request, worker}, acc ->
        cancel_queue_timer(request)
        note_session(request, worker)
        emit_queue_delay(request)
        GenServer.reply(request.from, {:ok, lease(acc, request, worker)})
        acc

      {:reject, request, reason}, acc ->
        cancel_queue_timer(request)
        Process.demonitor(request.mref, [:flush])

        GenServer.reply(
          request.from,
          {:error, Errors.checkout_error(reason, acc.pools[name], request)}
        )

        %{acc | callers: Map.delete(acc.callers, request.mref)}

      {:stop_worker, worker}, acc ->
        acc = Slots.forget_starter(acc, worker.id)
        Slots.stop_async(worker.id)

        Telemetry.emit([:snakepit, :pool, :worker, :retired], %{}, %{
          pool: name,
          worker_id: worker.id,
          reason: if(Map.get(worker, :drain) == :sessions, do: :scale_down, else: :replaced)
        })

        acc
        |> Server.update_pool(name, &State.forget_slot(&1, worker.id))
        |> Server.put_runtime(name, Runtime.stopped(acc.runtime[name], worker.id))
        |> Restart.stopped(name, worker.id)
    end)
  end

  # How long a queued request waited for its worker (built only when
  # someone listens).
  defp emit_queue_delay(%{now: queued_at} = request) do
    if Telemetry.handled?([:snakepit, :pool, :queue, :delay]),
      do: queue_delay(queued_at, request)
  end

  defp emit_queue_delay(_request), do: :ok

  defp queue_delay(queued_at, request) do
    Telemetry.emit(
      [:snakepit, :pool, :queue, :delay],
      %{delay_ms: Deadline.now() - queued_at},
      %{pool: request.pool, command: Map.get(request, :command)}
    )
  end

  @doc false
  # A caller died: drop its queued request or take back its slot.
  def caller_down(state, name, ref) do
    case State.cancel(state.pools[name], ref, :caller_down) do
      {:dropped, request, pool} ->
        cancel_queue_timer(request)
        Server.put_pool(state, name, pool)

      {:not_queued, _} ->
        # Its call may still run in the worker: stop it there first.
        stop_call(state, name, ref, false)
    end
  end

  @doc false
  # A call may still run in its worker (its caller gave up or died): ask
  # the worker to stop it, keeping the slot leased meanwhile, so the worker
  # never runs more calls than its capacity. The slot comes back when the
  # worker says the call ended; when it still runs after cancel_grace_ms,
  # or the worker cannot be asked, the worker is killed and replaced.
  def stop_call(state, name, ref, demonitor) do
    pool = state.pools[name]

    with %{^ref => lease} <- pool.leases,
         %{} = worker <- pool.workers[lease.worker_id] do
      if demonitor, do: Process.demonitor(lease.mref, [:flush])
      grace = Defaults.cancel_grace_ms()
      cref = make_ref()
      :ok = Native.grpc_cancel(worker.channel, self(), cref, lease.request_id, grace)
      timer = Process.send_after(self(), {:stop_timeout, cref}, grace + Call.crash_confirm_ms())

      %{
        state
        | callers: Map.delete(state.callers, lease.mref),
          stopping: Map.put(state.stopping, cref, {name, ref, worker.pid, timer})
      }
    else
      _ -> release(state, name, ref, :error, demonitor)
    end
  end

  @doc false
  def hard_stop(state, name, worker_pid) do
    emit_stopped(name, worker_pid, :hard_stop)
    # Its leases go when it is down (worker_down/5).
    GRPCWorker.hard_stop(worker_pid)
    state
  end

  @doc false
  def emit_stopped(name, worker_pid, stop) do
    Telemetry.emit([:snakepit, :request, :stopped], %{}, %{
      pool: name,
      worker_pid: worker_pid,
      stop: stop
    })
  end

  @doc false
  def release(state, name, ref, outcome, demonitor \\ true) do
    pool = Map.fetch!(state.pools, name)

    state =
      case pool.leases do
        %{^ref => lease} ->
          if demonitor, do: Process.demonitor(lease.mref, [:flush])
          count_request(pool, name, lease.worker_id)
          %{state | callers: Map.delete(state.callers, lease.mref)}

        _ ->
          state
      end

    {actions, pool} = State.checkin(pool, ref, outcome)
    state = Server.put_pool(state, name, pool)
    if actions == [], do: state, else: perform(state, name, actions)
  end

  @doc false
  def count_request(%State{} = pool, name, id) do
    count = LifecycleManager.increment_request_count(id)

    case pool.config.worker_max_requests do
      max when is_integer(max) and count >= max -> send(self(), {:max_requests, name, id})
      _ -> :ok
    end
  end
end
