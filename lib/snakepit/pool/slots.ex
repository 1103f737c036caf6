defmodule Snakepit.Pool.Slots do
  @moduledoc """
  The pool's worker slots, on the pool process's state (see
  `Snakepit.Pool.Server`): starting workers in batches, readiness, failed
  starts, deaths (crashes taint a worker under the crash barrier), starters
  that stop, and recycling (the replacement first, then the old worker
  retires).
  """

  alias Snakepit.{CrashBarrier, Error, Telemetry}
  alias Snakepit.Pool.{Deadline, Leases, Runtime, Server, State, WorkerSupervisor}
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

    args = %{
      id: id,
      pool_name: pool_name,
      pool_pid: self(),
      config: Map.put(pool.config, :worker_supervisor, Map.get(state, :worker_supervisor))
    }

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

    if ExitStatus.crash?(reason) do
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
    else
      {actions, pool} = State.remove_worker(state.pools[name], id, pid)
      state |> Server.put_pool(name, pool) |> Leases.perform(name, actions)
    end
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

        state |> Server.put_pool(name, pool) |> Leases.perform(name, actions)
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

        Server.put_runtime(state, name, rt)
    end
  end

  @doc false
  # Stopping a worker waits for its Python process to exit; the pool must
  # not wait with it.
  def stop_async(id) do
    Task.start(fn -> WorkerSupervisor.stop_worker_by_id(id) end)
  end
end
