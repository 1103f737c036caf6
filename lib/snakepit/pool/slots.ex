defmodule Snakepit.Pool.Slots do
  @moduledoc """
  The pool's worker slots, on the pool process's state (see
  `Snakepit.Pool.Server`): starting workers in batches, readiness, failed
  starts, deaths (crashes taint a worker under the crash barrier), starters
  that stop, recycling (the replacement first, then the old worker
  retires), and the pool's size: growing, shrinking and `resize/4`, as
  `Snakepit.Pool.Scaling` decides (see `Snakepit.Pool.Runtime` for members
  and slot indices).
  """

  alias Snakepit.{CrashBarrier, Error, Telemetry}

  alias Snakepit.Pool.{
    Admission,
    Deadline,
    Leases,
    Restart,
    Runtime,
    Scaling,
    Server,
    State,
    WorkerSupervisor
  }

  alias Snakepit.Pool.Worker.Starter
  alias Snakepit.Worker.{ExitStatus, LifecycleManager}

  defp now, do: Deadline.now()

  @doc false
  def start_batch(state, name) do
    rt = state.runtime[name]
    if rt.batch_timer, do: Process.cancel_timer(rt.batch_timer)
    {batch, more?, rt} = Runtime.next_batch(rt)
    state = Enum.reduce(batch, Server.put_runtime(state, name, rt), &start_worker(&2, name, &1))

    timer =
      if more?,
        do: Process.send_after(self(), {:next_batch, name}, state.runtime[name].batch_delay)

    Server.put_runtime(state, name, Runtime.batch_timer(state.runtime[name], timer))
  end

  @doc false
  def batch_settled(state, name, id) do
    case Runtime.settled(state.runtime[name], id) do
      {:next_batch, rt} -> state |> Server.put_runtime(name, rt) |> start_batch(name)
      {:wait, rt} -> Server.put_runtime(state, name, rt)
    end
  end

  @doc false
  def start_worker(state, pool_name, id) do
    pool = state.pools[pool_name]
    rt = state.runtime[pool_name]

    config =
      Map.merge(pool.config, %{
        worker_supervisor: Map.get(state, :worker_supervisor),
        slot_index: Runtime.slot_index(rt, id)
      })

    args = %{id: id, pool_name: pool_name, pool_pid: self(), config: config}

    case rt.profile.start_worker(args) do
      {:ok, _worker} ->
        case Starter.whereis(id) do
          nil ->
            state

          starter ->
            ref = Process.monitor(starter)
            rt = Runtime.started(rt, id, now())

            %{state | starters: Map.put(state.starters, ref, {pool_name, id})}
            |> Server.put_runtime(pool_name, rt)
        end

      {:error, reason} ->
        error =
          Error.worker_error("could not start worker #{id}: #{inspect(reason)}", %{worker_id: id})

        {actions, pool} = State.worker_failed(state.pools[pool_name], id, error)

        state
        |> Server.put_pool(pool_name, pool)
        |> Leases.perform(pool_name, actions)
        |> batch_settled(pool_name, id)
        |> replacement_failed(pool_name, id)
        |> Server.answer_waiters()
    end
  end

  @doc false
  def recycle(state, name, id, reason) do
    with %{workers: %{^id => %{status: :active}}} <- state.pools[name],
         {:ok, new_id, rt} <- Runtime.begin_recycle(state.runtime[name], name, id, reason) do
      Snakepit.Logger.info(:lifecycle, "recycling #{id} (#{reason}); replacement #{new_id}")
      {:ok, state |> Server.put_runtime(name, rt) |> start_worker(name, new_id)}
    else
      {:error, _} = error -> {error, state}
      _ -> {{:error, :not_found}, state}
    end
  end

  @doc false
  def lifecycle_config(state, name, _worker),
    do: Snakepit.Worker.LifecycleConfig.ensure(name, state.pools[name].config)

  @doc false
  # A worker process ended: take it out of rotation. Its starter restarts
  # it unless it is being retired. A crash taints it when the pool's crash
  # barrier is on.
  def worker_down(state, name, id, pid, reason) do
    LifecycleManager.untrack_worker(id, pid)

    state =
      if ExitStatus.crash?(reason),
        do: crashed(state, name, id, pid, reason),
        else: ended(state, name, id, pid)

    stop_if_retired(state, name, id)
  end

  defp crashed(state, name, id, pid, reason) do
    status = ExitStatus.of_reason(reason)
    info = %{worker_id: id, exit_status: status, classification: CrashBarrier.classify(status)}
    Telemetry.emit([:snakepit, :worker, :crash], %{}, Map.put(info, :pool, name))

    error =
      Error.worker_error("worker #{id} #{ExitStatus.describe(status)}", %{
        worker_id: id,
        pool: name,
        exit_status: status
      })

    {actions, pool} = State.worker_crashed(state.pools[name], id, pid, error)
    state = state |> Server.put_pool(name, pool) |> Leases.perform(name, actions)
    maybe_taint(state, name, id, info)
  end

  defp ended(state, name, id, pid) do
    {actions, pool} = State.remove_worker(state.pools[name], id, pid)
    state |> Server.put_pool(name, pool) |> Leases.perform(name, actions)
  end

  # A worker already taken out of the pool (its replacement is ready, or
  # it was draining to shrink the pool) that ends is not restarted.
  defp stop_if_retired(state, name, id) do
    rt = state.runtime[name]

    if Runtime.retiring?(rt, id) and not Runtime.member?(rt, id) and
         not Map.has_key?(state.pools[name].workers, id),
       do: Leases.perform(state, name, [{:stop_worker, %{id: id}}]),
       else: state
  end

  @doc false
  def maybe_taint(state, name, id, %{classification: classification} = info)
      when classification != :hard_stop do
    config = state.runtime[name].crash_barrier

    if CrashBarrier.enabled?(config) do
      CrashBarrier.taint_worker(name, id, info, config)
      state
    else
      state
    end
  end

  def maybe_taint(state, _name, _id, _info), do: state

  @doc false
  # The pool demonitors a starter before stopping it, so a starter that
  # goes down on its own crashed: the slot gets a new one.
  def starter_down(state, name, id, reason) do
    Snakepit.Logger.error(
      :pool,
      "the starter of worker #{id} stopped (#{inspect(reason)}); restarting it"
    )

    if Runtime.retiring?(state.runtime[name], id),
      do: state,
      else: start_worker(state, name, id)
  end

  @doc false
  def forget_starter(state, id) do
    case Enum.find(state.starters, fn {_ref, {_name, sid}} -> sid == id end) do
      {ref, _} ->
        Process.demonitor(ref, [:flush])
        %{state | starters: Map.delete(state.starters, ref)}

      nil ->
        state
    end
  end

  @doc false
  def replacement_ready(state, name, new_id) do
    case Runtime.replacement_ready(state.runtime[name], new_id) do
      {nil, _rt} ->
        state

      {{old_id, reason}, rt} ->
        state = Server.put_runtime(state, name, rt)
        old = state.pools[name].workers[old_id]

        if old do
          Telemetry.emit([:snakepit, :worker, :recycled], %{}, %{
            worker_id: old_id,
            pool: name,
            reason: reason,
            replacement: new_id,
            uptime: Runtime.uptime(rt, old_id, now()),
            request_count: LifecycleManager.request_count(old_id)
          })
        end

        # An old worker already down (its starter restarting it) is
        # stopped for good; a live one retires after its requests.
        {actions, pool} =
          if old,
            do: State.retire(state.pools[name], old_id),
            else: {[{:stop_worker, %{id: old_id}}], state.pools[name]}

        state
        |> Server.put_pool(name, pool)
        |> Leases.perform(name, actions)
        |> Restart.replaced(name, old_id, new_id)
    end
  end

  @doc false
  def replacement_failed(state, name, new_id) do
    case Runtime.replacement_failed(state.runtime[name], new_id) do
      {nil, _rt} ->
        state

      {{old_id, reason}, rt} ->
        Snakepit.Logger.error(
          :lifecycle,
          "replacement #{new_id} of #{old_id} (#{reason}) failed to start; #{old_id} keeps serving"
        )

        state
        |> Server.put_runtime(name, rt)
        |> Restart.replacement_failed(name, old_id, new_id)
    end
  end

  # -- size ----------------------------------------------------------------------

  @doc false
  # Sets the pool's size to `n` (`reason`: :resize, :calls_waiting, :idle)
  # and starts or retires workers to match it.
  def resize(state, name, n, reason) do
    # The size asked for counts as demand: an elastic pool keeps it for
    # scale_down_after_ms before it may shrink again.
    state
    |> Server.update_pool(name, &State.note_demand(&1, n * capacity(state, name)))
    |> set_size(name, n, reason)
    |> reconcile(name)
  end

  defp set_size(state, name, n, reason) do
    rt = state.runtime[name]

    if n == rt.size and reason != :resize do
      state
    else
      rt = if reason == :resize, do: Runtime.resize(rt, n), else: %{rt | size: n}

      Telemetry.emit(
        [:snakepit, :pool, :scale],
        %{from: state.runtime[name].size, to: n, workers: ready_count(state.pools[name])},
        %{pool: name, reason: reason, min: rt.min, max: rt.max}
      )

      if n != state.runtime[name].size do
        Snakepit.Logger.info(
          :pool,
          "pool #{inspect(name)}: size #{state.runtime[name].size} -> #{n} (#{reason})"
        )
      end

      state
      |> Server.put_runtime(name, rt)
      |> Server.update_pool(name, &%{&1 | expected: n})
    end
  end

  @doc false
  # Starts or retires workers until the pool's members match its size.
  # Retiring may choose workers with strict sessions (they drain those
  # first); it never chooses one being replaced.
  def reconcile(state, name) do
    rt = state.runtime[name]
    count = MapSet.size(rt.members)

    cond do
      count < rt.size ->
        {ids, rt} = Runtime.grow(rt, name, rt.size - count)
        state = Server.put_runtime(state, name, rt)
        Enum.reduce(ids, state, &start_worker(&2, name, &1))

      count > rt.size ->
        state
        |> candidates(name)
        |> Scaling.victims(count - rt.size, true)
        |> Enum.reduce(state, &leave(&2, name, &1))

      true ->
        state
    end
  end

  @doc false
  # Grows an elastic pool whose calls wait (Snakepit.Pool.Scaling.grow_to/1).
  def maybe_grow(state, name) do
    rt = state.runtime[name]
    pool = state.pools[name]
    queued = State.queued(pool)

    if rt.size < rt.max and queued > 0 do
      ready_slots = Enum.reduce(pool.workers, 0, fn {_, w}, n -> n + w.capacity end)

      target =
        Scaling.grow_to(%{
          size: rt.size,
          max: rt.max,
          queued: queued,
          busy: State.busy(pool),
          capacity: capacity(state, name),
          ready_slots: ready_slots,
          run_ms: Admission.estimate(pool.admission, nil),
          start_ms: rt.start_ms,
          backlog_ms: State.backlog_ms(pool)
        })

      if target > rt.size, do: resize(state, name, target, :calls_waiting), else: state
    else
      state
    end
  end

  @doc false
  # Shrinks an elastic pool to what it needed within scale_down_after_ms,
  # choosing only workers without strict sessions.
  def maybe_shrink(state, name) do
    rt = state.runtime[name]
    pool = state.pools[name]
    now = now()
    since = now - pool.config.scale_down_after_ms
    pool = State.forget_demand(pool, since)
    state = Server.put_pool(state, name, pool)
    count = MapSet.size(rt.members)

    target = Scaling.shrink_to(count, rt.min, State.demand(pool, since), capacity(state, name))

    if count > target and State.queued(pool) == 0 and rt.restart == nil do
      victims = state |> candidates(name) |> Scaling.victims(count - target, false)

      if victims == [] do
        state
      else
        state = set_size(state, name, count - length(victims), :idle)
        Enum.reduce(victims, state, &leave(&2, name, &1))
      end
    else
      state
    end
  end

  # Members that may leave, as Snakepit.Pool.Scaling.victims/3 wants them.
  defp candidates(state, name) do
    rt = state.runtime[name]
    pool = state.pools[name]

    for id <- rt.members, not Runtime.recycling?(rt, id) do
      case pool.workers do
        %{^id => %{status: :active} = w} ->
          %{
            id: id,
            ready: true,
            load: w.load,
            pinned: State.strict_pinned?(pool, id),
            slot: Runtime.slot_index(rt, id)
          }

        _ ->
          %{id: id, ready: false, load: 0, pinned: false, slot: Runtime.slot_index(rt, id)}
      end
    end
  end

  # Takes member `id` out of the pool: a ready worker drains (its calls,
  # and its strict sessions); one not ready yet is stopped at once.
  defp leave(state, name, id) do
    pending? = Runtime.pending?(state.runtime[name], id)
    state = Server.put_runtime(state, name, Runtime.leave(state.runtime[name], id))

    case state.pools[name].workers do
      %{^id => %{status: :active}} ->
        {actions, pool} = State.retire(state.pools[name], id, :sessions)
        state |> Server.put_pool(name, pool) |> Leases.perform(name, actions)

      _ ->
        if not pending?, do: stop_async(id)

        state
        |> forget_starter(id)
        |> Server.update_pool(name, &State.forget_slot(&1, id))
        |> Server.put_runtime(name, Runtime.stopped(state.runtime[name], id))
        |> batch_settled(name, id)
        |> Server.answer_waiters()
    end
  end

  @doc false
  # Stops the workers that drained since (their strict sessions' pins
  # expired).
  def stop_drained(state, name) do
    {actions, pool} = State.stop_drained(state.pools[name])
    state |> Server.put_pool(name, pool) |> Leases.perform(name, actions)
  end

  defp ready_count(pool), do: Enum.count(pool.workers, fn {_, w} -> w.status == :active end)

  # Slots per worker: a ready worker's, else what the profile gives.
  defp capacity(state, name) do
    pool = state.pools[name]

    case Enum.at(pool.workers, 0) do
      {_id, w} -> w.capacity
      nil -> Snakepit.WorkerProfile.capacity(pool.config)
    end
  end

  @doc false
  # Stopping a worker waits for its Python process to exit; the pool must
  # not wait with it.
  def stop_async(id) do
    Task.start(fn -> WorkerSupervisor.stop_worker_by_id(id) end)
  end
end
