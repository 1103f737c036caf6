defmodule Snakepit.Pool.Slots do
  @moduledoc """
  The pool's worker slots, on the pool process's state
  (`Snakepit.Pool.ServerState`): starting workers in batches, a worker
  ready or failing to start, deaths (crashes taint a worker under the
  crash barrier), starters that stop, recycling (the replacement first,
  then the old worker retires) and the restarts built on it
  (`Snakepit.Pool.Restart` keeps their progress; `advance_restart/2`
  replaces its workers).

  It also carries out `Snakepit.Pool.State`'s actions (`perform/3`):
  grants and rejections through `Snakepit.Pool.Leases`, stopping workers
  here. See `Snakepit.Pool.Runtime` for members and slot indices, and
  `Snakepit.Pool.Size` for the pool's size.
  """

  alias Snakepit.{CrashBarrier, Error, Telemetry}
  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.Pool.{Deadline, Draining, Leases, Restart, Runtime, ServerState, State}
  alias Snakepit.Pool.WorkerSupervisor
  alias Snakepit.Pool.Worker.Starter
  alias Snakepit.Worker.{ExitStatus, LifecycleConfig, LifecycleManager}

  defp now, do: Deadline.now()

  # -- actions -------------------------------------------------------------------

  @doc false
  # Carries out the actions of pool `name`'s scheduling state.
  @spec perform(ServerState.t(), atom(), [State.action()]) :: ServerState.t()
  def perform(state, _name, []), do: state

  def perform(state, name, actions) do
    Enum.reduce(actions, state, fn
      {:grant, request, worker}, acc -> Leases.grant(acc, request, worker)
      {:reject, request, reason}, acc -> Leases.reject(acc, name, request, reason)
      {:stop_worker, worker}, acc -> stop_worker(acc, name, worker)
    end)
  end

  # A worker leaves the pool for good (it drained, or its replacement is
  # ready): its slot is forgotten, and a restart that replaced it goes on.
  defp stop_worker(state, name, worker) do
    state = forget_starter(state, worker.id)
    stop_async(worker.id)

    Telemetry.emit([:snakepit, :pool, :worker, :retired], %{}, %{
      pool: name,
      worker_id: worker.id,
      reason: if(Map.get(worker, :drain) == :sessions, do: :scale_down, else: :replaced)
    })

    state
    |> ServerState.update_pool(name, &State.forget_slot(&1, worker.id))
    |> ServerState.update_runtime(name, &Runtime.stopped(&1, worker.id))
    |> Restart.stopped(name, worker.id)
    |> advance_restart(name)
  end

  @doc false
  # Stops the workers that drained since (their strict sessions' pins
  # expired).
  def stop_drained(state, name) do
    {actions, pool} = Draining.stop_drained(state.pools[name])
    state |> ServerState.put_pool(name, pool) |> perform(name, actions)
  end

  # -- starting ------------------------------------------------------------------

  @doc false
  def start_batch(state, name) do
    rt = state.runtime[name]
    if rt.batch_timer, do: Process.cancel_timer(rt.batch_timer)
    {batch, more?, rt} = Runtime.next_batch(rt)

    state =
      Enum.reduce(batch, ServerState.put_runtime(state, name, rt), &start_worker(&2, name, &1))

    timer =
      if more?,
        do: Process.send_after(self(), {:next_batch, name}, state.runtime[name].batch_delay)

    ServerState.update_runtime(state, name, &Runtime.batch_timer(&1, timer))
  end

  @doc false
  def batch_settled(state, name, id) do
    case Runtime.settled(state.runtime[name], id) do
      {:next_batch, rt} -> state |> ServerState.put_runtime(name, rt) |> start_batch(name)
      {:wait, rt} -> ServerState.put_runtime(state, name, rt)
    end
  end

  @doc false
  def start_worker(state, pool_name, id) do
    pool = state.pools[pool_name]
    rt = state.runtime[pool_name]

    config =
      Map.merge(pool.config, %{
        worker_supervisor: state.worker_supervisor,
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

            %{state | starters: Map.put(state.starters, ref, {pool_name, id})}
            |> ServerState.update_runtime(pool_name, &Runtime.started(&1, id, now()))
        end

      {:error, reason} ->
        error =
          Error.worker_error("could not start worker #{id}: #{inspect(reason)}", %{worker_id: id})

        {actions, pool} = State.worker_failed(state.pools[pool_name], id, error)

        state
        |> ServerState.put_pool(pool_name, pool)
        |> perform(pool_name, actions)
        |> batch_settled(pool_name, id)
        |> replacement_failed(pool_name, id)
    end
  end

  @doc false
  # A worker is ready. One taken out of the pool while it started, or a
  # retiring worker its starter brought back after a crash, stops for good.
  def worker_ready(state, name, worker) do
    rt = state.runtime[name]

    if Runtime.member?(rt, worker.id) or Runtime.replacement?(rt, worker.id),
      do: join(state, name, worker),
      else: stop_worker(state, name, %{id: worker.id})
  end

  defp join(state, name, worker) do
    ref = Process.monitor(worker.pid)
    rt = Runtime.ready(state.runtime[name], worker.id, now())
    state = ServerState.put_runtime(state, name, rt)

    Telemetry.emit(
      [:snakepit, :worker, :initialized],
      %{initialization_time: Runtime.uptime(rt, worker.id, now())},
      %{worker_id: worker.id, pool: name}
    )

    CrashBarrier.maybe_emit_restart(name, worker.id)

    LifecycleManager.track_worker(
      name,
      worker.id,
      worker.pid,
      LifecycleConfig.ensure(name, state.pools[name].config)
    )

    learn_batched_tools(state, name, worker.id)

    state =
      %{state | monitors: Map.put(state.monitors, ref, {name, worker.id, worker.pid})}
      |> ServerState.update_pool(name, &State.add_worker(&1, worker))
      |> batch_settled(name, worker.id)
      |> replacement_ready(name, worker.id)

    {actions, pool} = State.dispatch(state.pools[name])

    state
    |> ServerState.put_pool(name, pool)
    |> perform(name, actions)
    |> advance_restart(name)
  end

  # A ready worker's batched tools become its pool's (callers read them:
  # Snakepit.Pool.Batching.route/3).
  defp learn_batched_tools(state, name, worker_id) do
    for {tool, config} <- ToolRegistry.batched_tools(worker_id) do
      :ets.insert(state.batched, {{name, tool}, config})
      Snakepit.Pool.Batching.note_batched_tool()
    end
  end

  @doc false
  # A worker of pool `name` failed to start with `error`.
  def worker_failed(state, name, id, error) do
    rt = state.runtime[name]

    cond do
      Runtime.replacement?(rt, id) ->
        Snakepit.Logger.error(:pool, "Snakepit worker #{id} failed to start: #{error.message}")
        # A failed replacement is not retried: the worker it was to
        # replace keeps serving.
        state = forget_starter(state, id)
        stop_async(id)

        state
        |> ServerState.update_pool(name, &State.forget_slot(&1, id))
        |> replacement_failed(name, id)

      Runtime.member?(rt, id) ->
        Snakepit.Logger.error(:pool, "Snakepit worker #{id} failed to start: #{error.message}")
        failing? = not Map.get(error.details, :transient, false)
        {actions, pool} = State.worker_failed(state.pools[name], id, error, failing?)

        state
        |> ServerState.put_pool(name, pool)
        |> perform(name, actions)
        |> batch_settled(name, id)

      true ->
        state
    end
  end

  # -- recycling -----------------------------------------------------------------

  @doc false
  # Replaces worker `id`: its replacement starts, and once it is ready the
  # old worker retires. `{:ok, replacement_id, state}`, or `{{:error,
  # reason}, state}` (it is not a ready worker, or being recycled already).
  def recycle(state, name, id, reason) do
    with %{workers: %{^id => %{status: :active}}} <- state.pools[name],
         {:ok, new_id, rt} <- Runtime.begin_recycle(state.runtime[name], name, id, reason) do
      Snakepit.Logger.info(:lifecycle, "recycling #{id} (#{reason}); replacement #{new_id}")
      {:ok, new_id, state |> ServerState.put_runtime(name, rt) |> start_worker(name, new_id)}
    else
      {:error, _} = error -> {error, state}
      _ -> {{:error, :not_found}, state}
    end
  end

  @doc false
  # Replaces the next workers of the restart of pool `name`, as many as
  # it lets run at once.
  def advance_restart(state, name), do: state |> Restart.requeue(name) |> replace_next(name)

  defp replace_next(state, name) do
    case Restart.next(state, name) do
      {:recycle, id, reason, state} ->
        state =
          case recycle(state, name, id, reason) do
            {:ok, new_id, state} -> Restart.recycling(state, name, id, new_id)
            {{:error, _}, state} -> Restart.defer(state, name, id)
          end

        replace_next(state, name)

      {:idle, state} ->
        state
    end
  end

  @doc false
  def replacement_ready(state, name, new_id) do
    case Runtime.replacement_ready(state.runtime[name], new_id) do
      {nil, _rt} ->
        state

      {{old_id, reason}, rt} ->
        state = ServerState.put_runtime(state, name, rt)
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

        # A live old worker retires after its requests; one already down
        # (its starter restarting it) is stopped for good.
        if old do
          {actions, pool} = Draining.retire(state.pools[name], old_id)
          state |> ServerState.put_pool(name, pool) |> perform(name, actions)
        else
          stop_worker(state, name, %{id: old_id})
        end
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
        |> ServerState.put_runtime(name, rt)
        |> Restart.replacement_failed(name, old_id, new_id)
        |> advance_restart(name)
    end
  end

  # -- ends ------------------------------------------------------------------------

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
    state = state |> ServerState.put_pool(name, pool) |> perform(name, actions)
    maybe_taint(state, name, id, info)
  end

  defp ended(state, name, id, pid) do
    {actions, pool} = State.remove_worker(state.pools[name], id, pid)
    state |> ServerState.put_pool(name, pool) |> perform(name, actions)
  end

  # A worker already taken out of the pool (its replacement is ready, or
  # it was draining to shrink the pool) that ends is not restarted.
  defp stop_if_retired(state, name, id) do
    rt = state.runtime[name]

    if Runtime.retiring?(rt, id) and not Runtime.member?(rt, id) and
         not Map.has_key?(state.pools[name].workers, id),
       do: stop_worker(state, name, %{id: id}),
       else: state
  end

  defp maybe_taint(state, name, id, %{classification: classification} = info)
       when classification != :hard_stop do
    config = state.runtime[name].crash_barrier
    if CrashBarrier.enabled?(config), do: CrashBarrier.taint_worker(name, id, info, config)
    state
  end

  defp maybe_taint(state, _name, _id, _info), do: state

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
  # Stopping a worker waits for its Python process to exit; the pool must
  # not wait with it.
  def stop_async(id) do
    Task.start(fn -> WorkerSupervisor.stop_worker_by_id(id) end)
  end
end
