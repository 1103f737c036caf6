defmodule Snakepit.Pool.Draining do
  @moduledoc """
  Workers leaving a pool, as pure functions on its scheduling state
  (`Snakepit.Pool.State`).

  A worker taken out of the pool (`retire/3`) drains: it takes no new
  calls, except strict-affinity calls of sessions pinned to it, and stops
  once its calls in flight are done. A recycled worker (`drain: :calls`)
  stops then; the sessions pinned to it hear that their worker is gone. A
  worker the pool shrinks away (`drain: :sessions`) also waits until no
  strict session is pinned to it any more (their pins expire after the
  session TTL without calls, `Snakepit.Pool.State.prune_sessions/2`), so shrinking never loses
  a strict session's state.

  A worker that is drained is stopped: the functions here return
  `{:stop_worker, worker}` actions for the pool to carry out.
  """

  alias Snakepit.Pool.State

  @doc """
  Starts retiring a worker: it gets no new requests (except strict
  requests pinned to it) and is stopped once its in-flight requests are
  done, and with `drain: :sessions` once no strict session is pinned to
  it either. Returns `{:stop_worker, worker}` at once
  when it is drained already.
  """
  @spec retire(State.t(), String.t(), :calls | :sessions) :: {[State.action()], State.t()}
  def retire(state, id, drain \\ :calls) do
    case state.workers do
      %{^id => %{status: :active} = worker} ->
        worker = Map.merge(worker, %{status: :retiring, drain: drain})

        state = %{
          state
          | workers: Map.put(state.workers, id, worker),
            free: :queue.filter(&(&1 != id), state.free),
            retiring: state.retiring + 1
        }

        maybe_stop(state, worker, [])

      _ ->
        {[], state}
    end
  end

  @doc false
  # Stops `worker` when it is retiring and drained (adding the action to
  # `actions`): `{actions, state}`.
  @spec maybe_stop(State.t(), State.worker(), [State.action()]) :: {[State.action()], State.t()}
  def maybe_stop(state, %{status: :retiring, load: 0} = worker, actions) do
    if Map.get(worker, :drain) == :sessions and strict_pinned?(state, worker.id) do
      {actions, state}
    else
      state = %{
        state
        | workers: Map.delete(state.workers, worker.id),
          retiring: state.retiring - 1
      }

      {[{:stop_worker, worker} | actions], state}
    end
  end

  def maybe_stop(state, _worker, actions), do: {actions, state}

  @doc """
  Stops the retiring workers that are drained now (their strict sessions'
  pins expired or moved): `{[{:stop_worker, worker}], state}`.
  """
  @spec stop_drained(State.t()) :: {[State.action()], State.t()}
  def stop_drained(%{retiring: 0} = state), do: {[], state}

  def stop_drained(state) do
    Enum.reduce(state.workers, {[], state}, fn
      {_id, %{status: :retiring} = worker}, {actions, acc} -> maybe_stop(acc, worker, actions)
      _, acc -> acc
    end)
  end

  @doc """
  Is a session with strict affinity pinned to the current process of
  worker `id`?
  """
  @spec strict_pinned?(State.t(), String.t()) :: boolean()
  def strict_pinned?(state, id) do
    case state.workers do
      %{^id => %{pid: pid}} ->
        Enum.any?(state.sessions, &match?({_s, {^id, ^pid, _t, true}}, &1))

      _ ->
        false
    end
  end
end
