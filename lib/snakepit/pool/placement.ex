defmodule Snakepit.Pool.Placement do
  @moduledoc """
  Which free slot of a pool a request gets, as pure functions on its
  scheduling state (`Snakepit.Pool.State`).

  ## Choosing a worker

  Among free slots the pool prefers, in order: the session's worker (when
  the request has a session), then the least recently used worker that is
  neither tainted (it crashed recently) nor in the request's `avoid` list
  (workers a retry must not go back to). Tainted and avoided workers are
  used only when no other slot is free: a request never waits because of a
  taint.

  ## Session affinity

  A session is pinned to the worker (id and pid) that served it last. The
  request's `affinity` (else the pool's) decides what happens when that
  worker cannot take it:

    * `:hint` - any other free worker serves it (and the session moves there)
    * `:strict_queue` - it waits in the queue for its worker; queued
      requests are dispatched affinity-aware, so it never runs elsewhere
    * `:strict_fail_fast` - `{:error, :worker_busy}` at once

  A pinned worker that died (or was replaced by a restart under the same
  id) lost the session's in-memory state: strict modes answer
  `{:error, :session_worker_unavailable}` once and drop the pin, `:hint`
  moves on silently. A retiring worker (being recycled) still serves
  strict requests pinned to it until it retires.
  """

  alias Snakepit.Pool.State

  @doc "The affinity mode of `request` in pool `state`: its own, else the pool's, else `:hint`."
  @spec affinity(State.t(), State.request()) :: State.affinity()
  def affinity(state, request) do
    Map.get(request, :affinity) || Map.get(state.config, :affinity) || :hint
  end

  # The session's worker: {:ok, id} when it still runs the process that
  # served the session, :lost when it died or restarted, nil without a pin.
  defp preferred(state, request) do
    case Map.get(request, :session_id) do
      nil ->
        nil

      session ->
        case state.sessions do
          %{^session => {id, pid, _t, _strict}} ->
            case state.workers do
              %{^id => %{pid: ^pid}} -> {:ok, id}
              _ -> :lost
            end

          _ ->
            # A pin remembered by the session store (e.g. before a pool
            # restart) counts when the worker belongs to this pool.
            stored = Map.get(request, :stored_worker)
            if stored && Map.has_key?(state.workers, stored), do: {:ok, stored}
        end
    end
  end

  @doc """
  A slot for `request`: `{:ok, worker_id, state}` (the slot taken from the
  free queue), `{:wait, state}` (none it may have is free) or `{:error,
  reason, state}` (`:worker_busy`, `:session_worker_unavailable`).
  """
  @spec pick(State.t(), State.request()) ::
          {:ok, String.t(), State.t()} | {:wait, State.t()} | {:error, atom(), State.t()}
  def pick(state, request) do
    mode = affinity(state, request)

    case {preferred(state, request), mode} do
      {nil, _} ->
        pick_any(state, request)

      {:lost, :hint} ->
        pick_any(state, request)

      {:lost, _strict} ->
        {:error, :session_worker_unavailable,
         %{state | sessions: Map.delete(state.sessions, request.session_id)}}

      {{:ok, id}, :hint} ->
        worker = state.workers[id]

        if worker.status == :active and worker.load < worker.capacity and
             not state.tainted?.(id) and id not in Map.get(request, :avoid, []),
           do: take(state, id),
           else: pick_any(state, request)

      {{:ok, id}, strict} ->
        worker = state.workers[id]

        cond do
          worker.load < worker.capacity -> take(state, id)
          strict == :strict_fail_fast -> {:error, :worker_busy, state}
          true -> {:wait, state}
        end
    end
  end

  defp take(state, id) do
    case state.workers[id] do
      %{status: :active} -> {:ok, id, %{state | free: :queue.delete(id, state.free)}}
      _retiring -> {:ok, id, state}
    end
  end

  defp pick_any(state, request) do
    avoid = Map.get(request, :avoid, [])
    good? = fn id -> id not in avoid and not state.tainted?.(id) end

    case :queue.out(state.free) do
      {:empty, _} ->
        {:wait, state}

      # The common case: the least recently used slot will do.
      {{:value, id}, rest} ->
        if good?.(id) do
          {:ok, id, %{state | free: rest}}
        else
          id = Enum.find(:queue.to_list(rest), id, good?)
          {:ok, id, %{state | free: :queue.delete(id, state.free)}}
        end
    end
  end
end
