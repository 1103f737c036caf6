defmodule Snakepit.Pool.Restart do
  @moduledoc """
  Restarting every worker of a pool while it serves (`Snakepit.Pool.restart/2`,
  and `reload: true`), on the pool process's state
  (`Snakepit.Pool.ServerState`). This module keeps the restart's progress
  and says which worker is replaced next; `Snakepit.Pool.Slots` replaces
  it (`advance_restart/2`) and reports what became of it.

  A restart replaces the workers that are members of the pool when it
  begins (`Snakepit.Pool.Runtime`), in slot order, each the way a recycle
  does (`Snakepit.Pool.Slots.recycle/4`): the replacement starts first,
  in the same slot (same `worker_env`, same device); once it is ready the
  old worker takes no new calls, finishes those in flight and stops. A
  rolling restart (`rolling: true`, the default) replaces one worker at a
  time and begins the next once the previous old worker has stopped, so
  the pool never has fewer ready workers than its size, and at most one
  extra process; `rolling: false` starts every replacement at once.

  Workers started after the restart began already run the new code and
  are left alone; one that is not ready when its turn comes (it is
  restarting after a crash) is replaced once it is. Sessions pinned to a
  replaced worker follow the affinity rules for a worker that is gone:
  `:hint` sessions move on silently, strict ones get
  `:session_worker_unavailable` once.

  If a replacement fails to start (new code that does not import), the
  restart stops there: the old worker keeps serving, the workers not yet
  replaced are left as they are, and the caller gets the replacement's
  error. A restart asked for while one runs (or a reload that finds more
  changes) runs once the current one is over; its callers are answered
  when that one is done.

  Telemetry: `[:snakepit, :pool, :restart, :start]` (`%{workers: n}`),
  `[:snakepit, :pool, :restart, :step]` for each worker replaced
  (`%{duration_ms: ms}`, with `worker_id` and `replacement`) and
  `[:snakepit, :pool, :restart, :stop]` (`%{duration_ms: ms, replaced: n}`,
  `result: :ok | :error`), all with `pool`, `rolling` and `reason`.
  """

  alias Snakepit.{Error, Telemetry}
  alias Snakepit.Pool.{Deadline, Runtime, ServerState}

  defstruct queue: [],
            current: %{},
            deferred: [],
            concurrency: 1,
            rolling: true,
            reason: :restart,
            waiters: [],
            next: nil,
            started_at: 0,
            replaced: 0

  @type t :: %__MODULE__{}

  @doc false
  # Begins a restart of pool `name` (or queues one after the restart in
  # progress). `from` is answered when it is done (nil: nobody waits). The
  # caller then advances it (Snakepit.Pool.Slots.advance_restart/2).
  def start(state, name, from, opts) do
    rt = state.runtime[name]
    rolling = Keyword.get(opts, :rolling, true)
    reason = Keyword.get(opts, :reason, :restart)
    waiters = if from, do: [from], else: []

    case rt.restart do
      nil ->
        ids = Enum.sort_by(rt.members, &{Runtime.slot_index(rt, &1), &1})

        restart = %__MODULE__{
          queue: ids,
          concurrency: if(rolling, do: 1, else: max(length(ids), 1)),
          rolling: rolling,
          reason: reason,
          waiters: waiters,
          started_at: Deadline.now()
        }

        Telemetry.emit(
          [:snakepit, :pool, :restart, :start],
          %{workers: length(ids)},
          meta(name, restart)
        )

        Snakepit.Logger.info(
          :lifecycle,
          "pool #{inspect(name)}: #{if rolling, do: "rolling ", else: ""}restart of " <>
            "#{length(ids)} workers (#{reason})"
        )

        put(state, name, restart)

      %__MODULE__{next: next} = restart ->
        # Rolling if anyone asked for it: it is the gentler one.
        {r, o} = next || {rolling, %{reason: reason, waiters: []}}
        put(state, name, %{restart | next: {r or rolling, %{o | waiters: o.waiters ++ waiters}}})
    end
  end

  @doc false
  # Workers passed over since the last advance (being recycled already,
  # or starting) get their turn again.
  def requeue(state, name) do
    case state.runtime[name].restart do
      nil ->
        state

      restart ->
        put(state, name, %{restart | queue: restart.deferred ++ restart.queue, deferred: []})
    end
  end

  @doc false
  # The next worker to replace, while fewer replacements run than the
  # restart allows: `{:recycle, id, reason, state}` (the caller recycles
  # it and reports `recycling/4` or `defer/3`), or `{:idle, state}`. A
  # restart with nothing left finishes here, and one asked for meanwhile
  # begins.
  def next(state, name) do
    case state.runtime[name].restart do
      nil -> {:idle, state}
      restart -> pick(state, name, restart)
    end
  end

  defp pick(state, name, %{queue: [id | rest]} = restart)
       when map_size(restart.current) < restart.concurrency do
    rt = state.runtime[name]
    restart = %{restart | queue: rest}

    cond do
      # Gone, or started since the restart began (it runs the new code).
      not Runtime.member?(rt, id) or Map.get(rt.started_at, id, 0) > restart.started_at ->
        pick(state, name, restart)

      # Current before it is recycled: a replacement that fails at once
      # stops the restart (replacement_failed/4).
      Map.has_key?(state.pools[name].workers, id) ->
        current = Map.put(restart.current, id, {nil, Deadline.now()})
        {:recycle, id, restart.reason, put(state, name, %{restart | current: current})}

      # Starting: it may have read the old code; replaced once ready.
      Map.has_key?(rt.starting, id) ->
        pick(state, name, %{restart | deferred: restart.deferred ++ [id]})

      # Not started yet, or restarting after a crash: its next start reads
      # the new code.
      true ->
        pick(state, name, restart)
    end
  end

  defp pick(state, name, %{queue: [], deferred: [], current: current} = restart)
       when map_size(current) == 0,
       do: state |> finish(name, restart, :ok) |> next(name)

  defp pick(state, name, restart), do: {:idle, put(state, name, restart)}

  @doc false
  # Worker `old_id` is being replaced by `new_id`.
  def recycling(state, name, old_id, new_id) do
    with %__MODULE__{current: %{^old_id => {_, at}}} = restart <- state.runtime[name].restart do
      put(state, name, %{restart | current: Map.put(restart.current, old_id, {new_id, at})})
    else
      _ -> state
    end
  end

  @doc false
  # Worker `id` could not be recycled now (it is being recycled already):
  # its turn comes again.
  def defer(state, name, id) do
    with %__MODULE__{current: %{^id => _}} = restart <- state.runtime[name].restart do
      put(state, name, %{
        restart
        | current: Map.delete(restart.current, id),
          deferred: restart.deferred ++ [id]
      })
    else
      _ -> state
    end
  end

  @doc false
  # A worker the pool stopped on purpose: when it is one the restart
  # replaced, that step is done.
  def stopped(state, name, id) do
    with %__MODULE__{current: %{^id => {new_id, at}}} = restart <- state.runtime[name].restart do
      Telemetry.emit(
        [:snakepit, :pool, :restart, :step],
        %{duration_ms: Deadline.now() - at},
        Map.merge(meta(name, restart), %{worker_id: id, replacement: new_id})
      )

      put(state, name, %{
        restart
        | current: Map.delete(restart.current, id),
          replaced: restart.replaced + 1
      })
    else
      _ -> state
    end
  end

  @doc false
  # The replacement of `old_id` failed to start: the restart stops there.
  def replacement_failed(state, name, old_id, new_id) do
    with %__MODULE__{current: %{^old_id => _}} = restart <- state.runtime[name].restart do
      error =
        Error.worker_error(
          "restart of pool #{inspect(name)} stopped: the replacement #{new_id} of #{old_id} " <>
            "failed to start (#{old_id} keeps serving; see the log for its output)",
          %{pool: name, worker_id: old_id, replacement: new_id}
        )

      finish(
        state,
        name,
        %{restart | current: Map.delete(restart.current, old_id)},
        {:error, error}
      )
    else
      _ -> state
    end
  end

  defp finish(state, name, restart, result) do
    Telemetry.emit(
      [:snakepit, :pool, :restart, :stop],
      %{duration_ms: Deadline.now() - restart.started_at, replaced: restart.replaced},
      Map.put(meta(name, restart), :result, if(result == :ok, do: :ok, else: :error))
    )

    Enum.each(restart.waiters, &GenServer.reply(&1, result))
    state = put(state, name, nil)

    case restart.next do
      nil ->
        state

      {rolling, %{reason: reason, waiters: waiters}} ->
        # Callers that asked during this restart wait for the next one.
        state = start(state, name, nil, rolling: rolling, reason: reason)
        next = state.runtime[name].restart
        put(state, name, %{next | waiters: next.waiters ++ waiters})
    end
  end

  defp meta(name, restart), do: %{pool: name, rolling: restart.rolling, reason: restart.reason}

  defp put(state, name, restart),
    do: ServerState.update_runtime(state, name, &%{&1 | restart: restart})
end
