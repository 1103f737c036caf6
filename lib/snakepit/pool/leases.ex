defmodule Snakepit.Pool.Leases do
  @moduledoc """
  Leases of worker slots, on the pool process's state
  (`Snakepit.Pool.ServerState`): answering a checkout (granted, queued
  with a timer, refused), queued requests that time out or give up,
  grants and rejections, check-ins, callers that die, and stopping a call
  that may still run in its worker before its slot is reused.

  A function that gives a slot back returns `Snakepit.Pool.State`'s
  actions with the state, `{actions, state}`: the freed slot may go to a
  queued request or let a retiring worker stop, which its caller carries
  out (`Snakepit.Pool.Slots.perform/3`). This module grants and rejects
  (`grant/3`, `reject/4`); it never starts or stops workers.

  ## Stopping a call

  A call may still run in its worker when its caller gave up (it timed
  out, its stream was abandoned, its transport failed) or died. The pool
  is the one owner of stopping it (`stop_call/5`): it holds the slot, so
  the worker never runs more calls than its capacity, and it alone can
  replace the worker. It sends one `CancelTool` (by the call's request
  id, waiting up to `cancel_grace_ms` for the call to end) and gives the
  slot back when the worker says the call ended; when the call still
  runs, or the worker cannot be asked, the worker is killed and replaced.
  A caller whose call timed out asks for the stop itself and hears how it
  went (`Snakepit.Pool.Checkout.stop/2`); a later check-in of a call being
  stopped changes nothing.
  """

  alias Snakepit.{Defaults, GRPCWorker, Native, Telemetry}
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.GRPC.Client
  alias Snakepit.Pool.{Admission, Checkout, Deadline, Errors, ServerState, State}
  alias Snakepit.Worker.LifecycleManager

  @type actions :: [State.action()]

  # -- checkout --------------------------------------------------------------------

  @doc false
  # Places a caller's checked request: `{:reply, reply, state}` (granted
  # or refused now), `{:queued, state}` (it waits, with a timer), or
  # `{:noreply, state}` (refused as overloaded, the refusal held back a
  # little: Snakepit.Pool.Admission.refusal_delay/3).
  def checkout(state, request, caller, from) do
    name = request.pool || state.default

    case Map.fetch(state.pools, name) do
      :error ->
        {:reply, {:error, Errors.unknown_pool(name)}, state}

      {:ok, pool} ->
        mref = Process.monitor(caller)
        request = Map.merge(request, %{pool: name, from: from, mref: mref, now: Deadline.now()})
        place(state, name, request, State.checkout(pool, request))
    end
  end

  defp place(state, name, request, {:granted, worker, pool}) do
    note_session(request, worker)

    state =
      state
      |> ServerState.put_pool(name, pool)
      |> ServerState.watch_caller(request.mref, name, request.ref)

    {:reply, {:ok, lease(state, request, worker)}, state}
  end

  defp place(state, name, request, {:queued, pool}) do
    timer = schedule_queue_timeout(request, pool)
    pool = State.annotate_waiting(pool, request.ref, %{timer: timer})

    {:queued,
     state
     |> ServerState.put_pool(name, pool)
     |> ServerState.watch_caller(request.mref, name, request.ref)}
  end

  defp place(state, name, request, {:error, :overloaded, pool}) do
    Process.demonitor(request.mref, [:flush])
    error = Errors.checkout_error(:overloaded, pool, request)
    now = Deadline.now()
    delay = Admission.refusal_delay(request, now, error.details.retry_after_ms)
    Process.send_after(self(), {:refuse, request.from, error}, delay)
    {:noreply, ServerState.put_pool(state, name, pool)}
  end

  defp place(state, name, request, {:error, reason, pool}) do
    Process.demonitor(request.mref, [:flush])

    {:reply, {:error, Errors.checkout_error(reason, pool, request)},
     ServerState.put_pool(state, name, pool)}
  end

  defp lease(state, request, worker) do
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

  # The session store remembers the worker of each session, so affinity
  # survives pool restarts; written only when the worker changes.
  defp note_session(%{session_id: nil}, _worker), do: :ok
  defp note_session(%{stored_worker: id}, %{id: id}), do: :ok

  defp note_session(%{session_id: session}, worker),
    do: SessionStore.store_worker_session(session, worker.id)

  defp schedule_queue_timeout(request, pool) do
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

  # A request that leaves the queue early no longer needs its timer.
  defp cancel_queue_timer(%{timer: timer}) when is_reference(timer),
    do: :erlang.cancel_timer(timer, async: true, info: false)

  defp cancel_queue_timer(_request), do: :ok

  # -- queued requests ---------------------------------------------------------------

  @doc false
  # The queue time of request `ref` is up (`ms`): it is answered with a
  # timeout, unless it got a worker meanwhile.
  def queue_timeout(state, name, ref, ms) do
    {_dropped?, state} =
      drop_queued(state, name, ref, :timeout, fn request, _pool ->
        Telemetry.emit([:snakepit, :pool, :queue, :timeout], %{timeout_ms: ms}, %{pool: name})
        GenServer.reply(request.from, {:error, Errors.queue_timeout(name, ms)})
      end)

    state
  end

  @doc false
  # Queued request `ref` can no longer finish within its deadline.
  def doomed(state, name, ref) do
    {_dropped?, state} =
      drop_queued(state, name, ref, :overloaded, fn request, pool ->
        GenServer.reply(request.from, {:error, Errors.checkout_error(:overloaded, pool, request)})
      end)

    state
  end

  @doc false
  # The caller stopped waiting for its checkout (its own wait timed out):
  # its queued request is dropped, or the slot it got meanwhile comes back.
  def cancel_checkout(state, name, ref) do
    case drop_queued(state, name, ref, :caller_down) do
      {:dropped, state} -> {[], state}
      {:not_queued, state} -> release(state, name, ref, :ok)
    end
  end

  @doc false
  # A caller died: drop its queued request or stop its call.
  def caller_down(state, name, ref) do
    case drop_queued(state, name, ref, :caller_down) do
      {:dropped, state} -> {[], state}
      # Its call may still run in the worker: stop it there first.
      {:not_queued, state} -> stop_call(state, name, ref, false)
    end
  end

  # Takes request `ref` out of the queue (`why`: :timeout, :overloaded,
  # :caller_down), `answer` telling its caller: `{:dropped, state}`, or
  # `{:not_queued, state}` when it holds a slot (or is gone).
  defp drop_queued(state, name, ref, why, answer \\ fn _request, _pool -> :ok end) do
    case State.cancel(state.pools[name], ref, why) do
      {:dropped, request, pool} ->
        cancel_queue_timer(request)
        Process.demonitor(request.mref, [:flush])
        answer.(request, pool)

        {:dropped,
         state |> ServerState.put_pool(name, pool) |> ServerState.forget_caller(request.mref)}

      {:not_queued, _pool} ->
        {:not_queued, state}
    end
  end

  # -- grants and rejections ----------------------------------------------------------

  @doc false
  # A queued request gets its slot.
  def grant(state, request, worker) do
    cancel_queue_timer(request)
    note_session(request, worker)
    emit_queue_delay(request)
    GenServer.reply(request.from, {:ok, lease(state, request, worker)})
    state
  end

  @doc false
  # A queued request is refused (`reason`, see Snakepit.Pool.Errors).
  def reject(state, name, request, reason) do
    cancel_queue_timer(request)
    Process.demonitor(request.mref, [:flush])

    GenServer.reply(
      request.from,
      {:error, Errors.checkout_error(reason, state.pools[name], request)}
    )

    ServerState.forget_caller(state, request.mref)
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

  # -- check-ins ------------------------------------------------------------------------

  @doc false
  # The caller gives its slot back: `outcome` `:ok` or `:error`, or
  # `:cancel` when its call may still run in the worker (it is stopped
  # first).
  def checkin(state, name, ref, :cancel), do: stop_call(state, name, ref, true)
  def checkin(state, name, ref, outcome), do: release(state, name, ref, outcome)

  @doc false
  # The slot of `ref` comes back (`outcome` `:error` counts an error).
  def release(state, name, ref, outcome, demonitor \\ true) do
    pool = Map.fetch!(state.pools, name)

    state =
      case pool.leases do
        %{^ref => lease} ->
          if demonitor, do: Process.demonitor(lease.mref, [:flush])
          count_request(pool, name, lease.worker_id)
          ServerState.forget_caller(state, lease.mref)

        _ ->
          state
      end

    {actions, pool} = State.checkin(pool, ref, outcome)
    {actions, ServerState.put_pool(state, name, pool)}
  end

  defp count_request(%State{} = pool, name, id) do
    count = LifecycleManager.increment_request_count(id)

    case pool.config.worker_max_requests do
      max when is_integer(max) and count >= max -> send(self(), {:max_requests, name, id})
      _ -> :ok
    end
  end

  # -- stopping calls -------------------------------------------------------------------

  @doc false
  # Stops the call of lease `ref`, keeping its slot leased meanwhile (see
  # "Stopping a call"). `demonitor`: its caller is alive (it checked in,
  # or asked for the stop); `reply_to` (an alias, or nil) hears how the
  # call stopped.
  def stop_call(state, name, ref, demonitor, reply_to \\ nil) do
    pool = state.pools[name]

    with %{^ref => lease} <- pool.leases,
         %{} = worker <- pool.workers[lease.worker_id] do
      if demonitor, do: Process.demonitor(lease.mref, [:flush])
      state = ServerState.forget_caller(state, lease.mref)

      if Map.get(lease, :stopping, false) do
        # Asked already: one CancelTool per call.
        {[], state}
      else
        {[], cancel_tool(state, name, lease, worker, reply_to)}
      end
    else
      _ ->
        tell(reply_to, :unconfirmed)
        release(state, name, ref, :error, demonitor)
    end
  end

  defp cancel_tool(state, name, lease, worker, reply_to) do
    grace = Defaults.cancel_grace_ms()
    cref = make_ref()
    :ok = Native.grpc_cancel(worker.channel, self(), cref, lease.request_id, grace)

    timer =
      Process.send_after(self(), {:stop_timeout, cref}, grace + Checkout.crash_confirm_ms())

    stop = %{pool: name, ref: lease.ref, worker: worker.pid, timer: timer, reply_to: reply_to}

    %{
      ServerState.update_pool(
        state,
        name,
        &State.annotate_lease(&1, lease.ref, %{stopping: true})
      )
      | stopping: Map.put(state.stopping, cref, stop)
    }
  end

  @doc false
  # The worker's answer to the CancelTool `cref`: `{name, actions, state}`.
  # The slot comes back once the call ended; a call still running (or a
  # worker that cannot be asked) gets its worker killed.
  def stop_answered(state, cref, reply) do
    {stop, stopping} = Map.pop!(state.stopping, cref)
    Process.cancel_timer(stop.timer)
    state = %{state | stopping: stopping}

    case reply do
      {:ok, answer} when answer != "running" ->
        how = Client.stop_state(answer)
        emit_stopped(stop.pool, stop.worker, how)
        {actions, state} = release(state, stop.pool, stop.ref, :error, false)
        tell(stop.reply_to, how)
        {stop.pool, actions, state}

      {:ok, _running} ->
        tell(stop.reply_to, :running)
        {stop.pool, [], hard_stop(state, stop.pool, stop.worker)}

      _unreachable ->
        tell(stop.reply_to, :unconfirmed)
        {stop.pool, [], hard_stop(state, stop.pool, stop.worker)}
    end
  end

  @doc false
  # The worker did not answer the CancelTool `cref` in time.
  def stop_timed_out(state, cref) do
    {stop, stopping} = Map.pop!(state.stopping, cref)
    tell(stop.reply_to, :running)
    hard_stop(%{state | stopping: stopping}, stop.pool, stop.worker)
  end

  defp hard_stop(state, name, worker_pid) do
    emit_stopped(name, worker_pid, :hard_stop)
    # Its leases go when it is down (Snakepit.Pool.Slots.worker_down/5).
    GRPCWorker.hard_stop(worker_pid)
    state
  end

  defp emit_stopped(name, worker_pid, stop) do
    Telemetry.emit([:snakepit, :request, :stopped], %{}, %{
      pool: name,
      worker_pid: worker_pid,
      stop: stop
    })
  end

  # The caller waits on a monitor alias: once it gave up, the runtime drops
  # the answer.
  defp tell(nil, _stop), do: :ok
  defp tell(reply_to, stop), do: send(reply_to, {reply_to, stop})
end
