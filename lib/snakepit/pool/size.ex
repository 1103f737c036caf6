defmodule Snakepit.Pool.Size do
  @moduledoc """
  The size of each pool, on the pool process's state
  (`Snakepit.Pool.ServerState`): `Snakepit.Pool.resize/2`, and an elastic
  pool growing while calls wait and shrinking after `scale_down_after_ms`
  without need, as `Snakepit.Pool.Scaling` decides. New members are
  started and leaving ones drained through `Snakepit.Pool.Slots`.
  """

  alias Snakepit.Telemetry
  alias Snakepit.Pool.{Admission, Deadline, Draining, Runtime, Scaling, ServerState, Slots, State}

  @doc false
  # Sets the pool's size to `n` (`reason`: :resize, :calls_waiting, :idle)
  # and starts or retires workers to match it.
  def resize(state, name, n, reason) do
    # The size asked for counts as demand: an elastic pool keeps it for
    # scale_down_after_ms before it may shrink again.
    state
    |> ServerState.update_pool(name, &State.note_demand(&1, n * capacity(state, name)))
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
      |> ServerState.put_runtime(name, rt)
      |> ServerState.update_pool(name, &%{&1 | expected: n})
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
        state = ServerState.put_runtime(state, name, rt)
        Enum.reduce(ids, state, &Slots.start_worker(&2, name, &1))

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
    now = Deadline.now()
    since = now - pool.config.scale_down_after_ms
    pool = State.forget_demand(pool, since)
    state = ServerState.put_pool(state, name, pool)
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
            pinned: Draining.strict_pinned?(pool, id),
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
    state = ServerState.put_runtime(state, name, Runtime.leave(state.runtime[name], id))

    case state.pools[name].workers do
      %{^id => %{status: :active}} ->
        {actions, pool} = Draining.retire(state.pools[name], id, :sessions)
        state |> ServerState.put_pool(name, pool) |> Slots.perform(name, actions)

      _ ->
        if not pending?, do: Slots.stop_async(id)

        state
        |> Slots.forget_starter(id)
        |> ServerState.update_pool(name, &State.forget_slot(&1, id))
        |> ServerState.put_runtime(name, Runtime.stopped(state.runtime[name], id))
        |> Slots.batch_settled(name, id)
    end
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
end
