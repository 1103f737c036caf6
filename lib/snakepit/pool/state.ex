defmodule Snakepit.Pool.State do
  @moduledoc """
  The scheduling state of one pool, as pure functions: which worker slots
  are free, who waits in the queue, which caller holds which slot, and the
  counters behind `Snakepit.get_stats/1`.

  `Snakepit.Pool` owns one of these per pool and does the messaging; every
  decision is made here so it can be tested without processes.

  A worker of capacity `n` contributes `n` slots. A request either gets a
  slot at once, waits in a bounded FIFO queue, or is refused.
  """

  defstruct name: nil,
            config: %{},
            status: :starting,
            startup_error: nil,
            expected: 0,
            workers: %{},
            free: :queue.new(),
            queue: :queue.new(),
            waiting: %{},
            leases: %{},
            sessions: %{},
            failed: MapSet.new(),
            stats: %{requests: 0, errors: 0, queue_timeouts: 0, pool_saturated: 0}

  @type worker :: %{
          required(:id) => String.t(),
          required(:pid) => pid(),
          required(:capacity) => pos_integer(),
          required(:load) => non_neg_integer(),
          optional(atom()) => term()
        }

  @type request :: %{
          required(:ref) => reference(),
          required(:session_id) => String.t() | nil,
          optional(atom()) => term()
        }

  @type t :: %__MODULE__{}

  @doc "A pool that expects `config.pool_size` workers."
  @spec new(map()) :: t()
  def new(config), do: %__MODULE__{name: config.name, config: config, expected: config.pool_size}

  # -- workers ---------------------------------------------------------------

  @doc "Adds (or re-adds after a restart) a ready worker with all its slots free."
  @spec add_worker(t(), worker()) :: t()
  def add_worker(state, %{id: id} = worker) do
    state = remove_worker(state, id)
    worker = Map.put(worker, :load, 0)
    free = Enum.reduce(1..worker.capacity, state.free, fn _, q -> :queue.in(id, q) end)

    %{
      state
      | workers: Map.put(state.workers, id, worker),
        free: free,
        failed: MapSet.delete(state.failed, id),
        status: :ready
    }
  end

  @doc """
  Removes a worker. Its leases are dropped (their callers learn of the
  failure from their own call); sessions that preferred it forget it.
  """
  @spec remove_worker(t(), String.t(), pid() | nil) :: t()
  def remove_worker(state, id, pid \\ nil) do
    case Map.pop(state.workers, id) do
      {nil, _} ->
        state

      # A restarted worker reuses its id; a late notice about the old
      # process must not remove the new one.
      {%{pid: current}, _} when pid != nil and pid != current ->
        state

      {_worker, workers} ->
        leases = Map.reject(state.leases, fn {_ref, lease} -> lease.worker_id == id end)
        sessions = Map.reject(state.sessions, fn {_s, w} -> w == id end)

        %{
          state
          | workers: workers,
            free: :queue.filter(&(&1 != id), state.free),
            leases: leases,
            sessions: sessions
        }
    end
  end

  @doc """
  Records a worker that failed to start. When every expected worker has
  failed before any became ready, the pool itself has failed with `error`.
  """
  @spec worker_failed(t(), String.t(), term()) :: t()
  def worker_failed(state, id, error) do
    state = %{remove_worker(state, id) | failed: MapSet.put(state.failed, id)}

    if state.status == :starting and MapSet.size(state.failed) >= state.expected do
      %{state | status: :failed, startup_error: error}
    else
      state
    end
  end

  @doc "True once every expected worker has either become ready or failed."
  @spec init_complete?(t()) :: boolean()
  def init_complete?(state),
    do: map_size(state.workers) + MapSet.size(state.failed) >= state.expected

  # -- requests --------------------------------------------------------------

  @doc """
  Places a request: `{:granted, worker, state}` with a slot leased to the
  request's ref, `{:queued, state}`, or `{:error, :pool_saturated | :pool_failed, state}`.
  """
  @spec checkout(t(), request()) ::
          {:granted, worker(), t()} | {:queued, t()} | {:error, atom(), t()}
  def checkout(%{status: :failed} = state, _request), do: {:error, :pool_failed, state}

  def checkout(state, request) do
    case take_slot(state, request.session_id) do
      {:ok, id, state} ->
        {:granted, state.workers[id], lease(state, request, id)}

      :none ->
        if :queue.len(state.queue) >= state.config.max_queue_size do
          {:error, :pool_saturated, bump(state, :pool_saturated)}
        else
          {:queued,
           %{
             state
             | queue: :queue.in(request.ref, state.queue),
               waiting: Map.put(state.waiting, request.ref, request)
           }}
        end
    end
  end

  # Session affinity as a hint: the session's last worker when it has a free
  # slot, otherwise whichever slot is next.
  defp take_slot(state, session_id) do
    preferred = session_id && Map.get(state.sessions, session_id)

    cond do
      preferred && free_slot?(state, preferred) ->
        {:ok, preferred, %{state | free: :queue.delete(preferred, state.free)}}

      true ->
        case :queue.out(state.free) do
          {{:value, id}, free} -> {:ok, id, %{state | free: free}}
          {:empty, _} -> :none
        end
    end
  end

  defp free_slot?(state, id) do
    case state.workers do
      %{^id => w} -> w.load < w.capacity
      _ -> false
    end
  end

  defp lease(state, request, id) do
    worker = state.workers[id]
    workers = Map.put(state.workers, id, %{worker | load: worker.load + 1})

    sessions =
      if request.session_id,
        do: Map.put(state.sessions, request.session_id, id),
        else: state.sessions

    lease = Map.put(request, :worker_id, id)

    %{
      state
      | workers: workers,
        sessions: sessions,
        leases: Map.put(state.leases, request.ref, lease)
    }
    |> bump(:requests)
  end

  @doc """
  Returns the slot held by `ref` and hands freed slots to waiting requests
  in FIFO order. Returns the grants to send: `[{request, worker}]`.
  """
  @spec checkin(t(), reference(), :ok | :error) :: {[{request(), worker()}], t()}
  def checkin(state, ref, outcome \\ :ok) do
    case Map.pop(state.leases, ref) do
      {nil, _} ->
        {[], state}

      {lease, leases} ->
        state = %{state | leases: leases}
        state = if outcome == :error, do: bump(state, :errors), else: state

        id = lease.worker_id

        state =
          case state.workers do
            %{^id => w} ->
              %{
                state
                | workers: Map.put(state.workers, w.id, %{w | load: w.load - 1}),
                  free: :queue.in(w.id, state.free)
              }

            _ ->
              state
          end

        dispatch(state)
    end
  end

  @doc "Grants free slots to queued requests, oldest first."
  @spec dispatch(t()) :: {[{request(), worker()}], t()}
  def dispatch(state), do: dispatch(state, [])

  defp dispatch(state, grants) do
    with {{:value, ref}, queue} <- :queue.out(state.queue),
         {:ok, id, state} <-
           take_slot(%{state | queue: queue}, Map.get(state.waiting, ref, %{})[:session_id]) do
      {request, waiting} = Map.pop(state.waiting, ref)
      state = %{state | waiting: waiting}
      dispatch(lease(state, request, id), [{request, state.workers[id]} | grants])
    else
      _ -> {Enum.reverse(grants), state}
    end
  end

  @doc """
  Drops a queued request (timed out, or its caller died). `{:dropped,
  request, state}` when it was still waiting, `{:not_queued, state}` if not.
  """
  @spec cancel(t(), reference(), :timeout | :caller_down) ::
          {:dropped, request(), t()} | {:not_queued, t()}
  def cancel(state, ref, why) do
    case Map.pop(state.waiting, ref) do
      {nil, _} ->
        {:not_queued, state}

      {request, waiting} ->
        state = %{state | waiting: waiting, queue: :queue.delete(ref, state.queue)}
        state = if why == :timeout, do: bump(state, :queue_timeouts), else: state
        {:dropped, request, state}
    end
  end

  @doc "Does `ref` hold a slot?"
  @spec leased?(t(), reference()) :: boolean()
  def leased?(state, ref), do: Map.has_key?(state.leases, ref)

  @doc "The counters and gauges of `Snakepit.get_stats/1`."
  @spec stats(t()) :: map()
  def stats(state) do
    busy = Enum.count(state.workers, fn {_, w} -> w.load > 0 end)

    Map.merge(state.stats, %{
      queued: :queue.len(state.queue),
      workers: map_size(state.workers),
      available: map_size(state.workers) - busy,
      busy: busy
    })
  end

  defp bump(state, key), do: %{state | stats: Map.update!(state.stats, key, &(&1 + 1))}
end
