defmodule Snakepit.Pool.State do
  @moduledoc """
  The scheduling state of one pool, as pure functions: which worker slots
  are free, who waits in the queue, which caller holds which slot, which
  worker each session is pinned to, and the counters behind
  `Snakepit.get_stats/1` (read by `Snakepit.Pool.Stats`).

  `Snakepit.Pool` owns one of these per pool and does the messaging; every
  decision is made here so it can be tested without processes.

  ## Slots

  A worker of capacity `n` contributes `n` slots. A request either gets a
  slot at once, waits in a bounded FIFO queue, or is refused. Which free
  slot it gets (the session's worker, affinity modes, tainted workers) is
  `Snakepit.Pool.Placement`'s choice. A worker taken out of the pool drains
  first (`Snakepit.Pool.Draining`).

  ## Demand

  Each grant records how many slots were busy, and each call that has to
  queue how many slots would have been needed (`demand/3` reads it back):
  the pool shrinks only below what it needed within a window.

  ## Actions

  `checkin/3`, `dispatch/1` and `remove_worker/3` (and
  `Snakepit.Pool.Draining`'s functions) return actions
  for the pool to carry out: `{:grant, request, worker}`, `{:reject,
  request, reason}` and `{:stop_worker, worker}`.
  """

  alias Snakepit.Pool.{Admission, Deadline, Draining, Placement}

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
            settled: MapSet.new(),
            down: %{},
            # Who is tainted is recorded once, in Snakepit.Worker.TaintRegistry;
            # the pool asks through this function (tests give their own).
            tainted?: &Snakepit.Worker.TaintRegistry.worker_tainted?/1,
            retiring: 0,
            # Slots leased now, and when each level of demand (slots that
            # were needed) was last seen: level => monotonic ms.
            busy: 0,
            demand: %{},
            # Since when (monotonic ms) calls have waited without the queue
            # emptying once; nil with an empty queue.
            backlog_since: nil,
            # The queue discipline and its run-time estimates.
            admission: %Admission{},
            # Monotonic milliseconds (tests give their own clock).
            clock: &Deadline.now/0,
            stats: %{requests: 0, errors: 0, queue_timeouts: 0, pool_saturated: 0, shed: 0}

  @type worker :: %{
          required(:id) => String.t(),
          required(:pid) => pid(),
          required(:capacity) => pos_integer(),
          optional(:load) => non_neg_integer(),
          optional(:status) => :active | :retiring,
          optional(atom()) => term()
        }

  @type affinity :: :hint | :strict_queue | :strict_fail_fast

  @type request :: %{
          required(:ref) => reference(),
          optional(:session_id) => String.t() | nil,
          optional(:affinity) => affinity() | nil,
          optional(:stored_worker) => String.t() | nil,
          optional(:avoid) => [String.t()],
          optional(:now) => integer(),
          optional(atom()) => term()
        }

  @type action ::
          {:grant, request(), worker()}
          | {:reject, request(), atom()}
          | {:stop_worker, worker()}

  @type t :: %__MODULE__{}

  @doc """
  A pool that expects `config.pool_size` workers. `opts[:tainted?]` tells
  whether a worker is tainted (default: `Snakepit.Worker.TaintRegistry`).
  """
  @spec new(map(), keyword()) :: t()
  def new(config, opts \\ []) do
    state = %__MODULE__{
      name: config.name,
      config: config,
      expected: config.pool_size,
      admission: Admission.new(Map.get(config, :queue))
    }

    state = if fun = opts[:tainted?], do: %{state | tainted?: fun}, else: state
    if clock = opts[:clock], do: %{state | clock: clock}, else: state
  end

  # -- workers ---------------------------------------------------------------

  @doc "Adds (or re-adds after a restart) a ready worker with all its slots free."
  @spec add_worker(t(), worker()) :: t()
  def add_worker(state, %{id: id} = worker) do
    {_actions, state} = remove_worker(state, id)
    worker = Map.merge(worker, %{load: 0, status: :active})
    free = Enum.reduce(1..worker.capacity, state.free, fn _, q -> :queue.in(id, q) end)

    %{
      state
      | workers: Map.put(state.workers, id, worker),
        free: free,
        settled: MapSet.put(state.settled, id),
        down: Map.delete(state.down, id),
        status: :ready
    }
  end

  @doc """
  Removes a worker (it died or was stopped). Its leases are dropped: their
  callers learn of the failure from their own call. Sessions pinned to it
  keep their pin, now stale, so strict sessions learn that their worker is
  gone. Requests waiting only for this worker are rejected.

  A notice about an older process of a restarted worker (`pid` given and
  not the current one) changes nothing.
  """
  @spec remove_worker(t(), String.t(), pid() | nil) :: {[action()], t()}
  def remove_worker(state, id, pid \\ nil) do
    case Map.fetch(state.workers, id) do
      :error ->
        {[], state}

      {:ok, %{pid: current}} when pid != nil and pid != current ->
        {[], state}

      {:ok, worker} ->
        leases = Map.reject(state.leases, fn {_ref, lease} -> lease.worker_id == id end)

        state = %{
          state
          | workers: Map.delete(state.workers, id),
            free: :queue.filter(&(&1 != id), state.free),
            leases: leases,
            busy: state.busy - worker.load,
            retiring: state.retiring - if(worker.status == :retiring, do: 1, else: 0)
        }

        dispatch(state, true)
    end
  end

  @doc """
  A ready worker's process died (`pid` as in `remove_worker/3`): it is
  removed, and its slot is down, restarting, with `error` as the reason.
  """
  @spec worker_crashed(t(), String.t(), pid() | nil, term()) :: {[action()], t()}
  def worker_crashed(state, id, pid, error) do
    case state.workers do
      %{^id => %{pid: current}} when pid == nil or pid == current ->
        {actions, state} = remove_worker(state, id, pid)
        state = mark_down(state, id, :restarting, error)
        {more, state} = settle_status(state)
        {actions ++ more, state}

      _ ->
        {[], state}
    end
  end

  @doc """
  Records a worker that failed to start. `failing?` says the failure was
  the worker's own (an exception at start, a missing module, Python
  exiting); false when it was killed from outside and is expected back.

  When no worker is ready and every slot is failing, after every expected
  worker had its first try, the pool is `:failed`: requests are refused at
  once (the queued ones too, as `:reject` actions) with `error` as the
  cause, instead of waiting for a worker that may never come. The slots are
  still restarted (with backoff) and the pool is `:ready` again as soon as
  one worker is.
  """
  @spec worker_failed(t(), String.t(), term(), boolean()) :: {[action()], t()}
  def worker_failed(state, id, error, failing? \\ true) do
    {_actions, state} = remove_worker(state, id)
    status = if failing?, do: :failing, else: :restarting
    state = %{state | settled: MapSet.put(state.settled, id)}
    settle_status(mark_down(state, id, status, error))
  end

  @doc """
  The slot of `id` is restarting: its starter announced the next start
  (`%{delay_ms:, failures:}`), which `get_stats/1` reports.
  """
  @spec worker_restarting(t(), String.t(), map()) :: t()
  def worker_restarting(state, id, %{failures: failures, delay_ms: delay}) do
    case state.down do
      %{^id => slot} ->
        slot = %{slot | failures: failures, retry_in_ms: delay}
        %{state | down: Map.put(state.down, id, slot)}

      _ ->
        state
    end
  end

  @doc "Forgets a slot for good (its starter was stopped on purpose)."
  @spec forget_slot(t(), String.t()) :: t()
  def forget_slot(state, id) do
    %{state | down: Map.delete(state.down, id), settled: MapSet.delete(state.settled, id)}
  end

  defp mark_down(state, id, status, error) do
    slot = Map.get(state.down, id, %{failures: 0, retry_in_ms: 0})
    slot = Map.merge(slot, %{status: status, error: error})
    %{state | down: Map.put(state.down, id, slot), startup_error: error}
  end

  # :ready with a worker; :failed when every slot has had its try and is
  # failing; :starting until the first worker is ready; else :recovering
  # (no worker now, but one is being restarted).
  defp settle_status(state) do
    cond do
      map_size(state.workers) > 0 -> {[], %{state | status: :ready}}
      failing?(state) -> reject_waiting(%{state | status: :failed}, :pool_failed)
      state.status == :starting -> {[], state}
      true -> {[], %{state | status: :recovering}}
    end
  end

  defp failing?(state) do
    MapSet.size(state.settled) >= state.expected and map_size(state.down) > 0 and
      Enum.all?(state.down, fn {_id, slot} -> slot.status == :failing end)
  end

  defp reject_waiting(state, reason) do
    actions = for ref <- :queue.to_list(state.queue), do: {:reject, state.waiting[ref], reason}
    {actions, %{state | queue: :queue.new(), waiting: %{}, backlog_since: nil}}
  end

  @doc "True once every expected worker has either become ready or failed."
  @spec init_complete?(t()) :: boolean()
  def init_complete?(state), do: MapSet.size(state.settled) >= state.expected

  @doc """
  The most slots the pool needed at any time since `since` (monotonic ms):
  slots busy at a grant, or busy plus queued when a call had to wait.
  """
  @spec demand(t(), integer()) :: non_neg_integer()
  def demand(state, since) do
    Enum.reduce(state.demand, 0, fn {level, at}, acc ->
      if at >= since and level > acc, do: level, else: acc
    end)
  end

  @doc """
  Records a demand of `slots` now (a resize asks for that many: the pool
  keeps them for a window before it may shrink).
  """
  @spec note_demand(t(), non_neg_integer()) :: t()
  def note_demand(state, slots) do
    at = state.clock.()
    %{state | demand: Map.update(state.demand, slots, at, &max(&1, at))}
  end

  @doc "Forgets demand seen before `since`."
  @spec forget_demand(t(), integer()) :: t()
  def forget_demand(state, since),
    do: %{state | demand: Map.reject(state.demand, fn {_level, at} -> at < since end)}

  @doc "Slots leased now."
  @spec busy(t()) :: non_neg_integer()
  def busy(state), do: state.busy

  @doc "Requests waiting in the queue."
  @spec queued(t()) :: non_neg_integer()
  def queued(state), do: :queue.len(state.queue)

  @doc "Is the worker tainted (chosen only when nothing else is free)?"
  @spec tainted?(t(), String.t()) :: boolean()
  def tainted?(state, id), do: state.tainted?.(id)

  @doc "Forgets session pins not used since `older_than` (same clock as `request.now`)."
  @spec prune_sessions(t(), integer()) :: t()
  def prune_sessions(state, older_than) do
    %{
      state
      | sessions:
          Map.reject(state.sessions, fn {_s, {_id, _pid, t, _strict}} -> t < older_than end)
    }
  end

  @doc "The worker a session is pinned to, or nil."
  @spec session_worker(t(), String.t()) :: String.t() | nil
  def session_worker(state, session_id) do
    case state.sessions do
      %{^session_id => {id, _pid, _t, _strict}} -> id
      _ -> nil
    end
  end

  # -- requests --------------------------------------------------------------

  @doc """
  Places a request: `{:granted, worker, state}` with a slot leased to the
  request's ref, `{:queued, state}`, or `{:error, reason, state}` with
  reason `:pool_failed`, `:pool_saturated`, `:worker_busy` or
  `:session_worker_unavailable`.
  """
  @spec checkout(t(), request()) ::
          {:granted, worker(), t()} | {:queued, t()} | {:error, atom(), t()}
  def checkout(%{status: :failed} = state, _request), do: {:error, :pool_failed, state}

  def checkout(state, request) do
    case Placement.pick(state, request) do
      {:ok, id, state} ->
        state = lease(state, request, id)
        {:granted, state.workers[id], state}

      {:error, reason, state} ->
        {:error, reason, state}

      {:wait, state} ->
        ahead = :queue.len(state.queue)

        cond do
          ahead >= state.config.max_queue_size ->
            {:error, :pool_saturated, bump(state, :pool_saturated)}

          Admission.admit(state.admission, request, ahead, slots(state), state.clock.()) != :ok ->
            {:error, :overloaded, shed(state)}

          true ->
            state = note_demand(state, state.busy + ahead + 1)
            state = if ahead == 0, do: %{state | backlog_since: state.clock.()}, else: state

            {:queued,
             %{
               state
               | queue: :queue.in(request.ref, state.queue),
                 waiting: Map.put(state.waiting, request.ref, request)
             }}
        end
    end
  end

  # Slots of the pool's workers (busy or free).
  defp slots(state), do: Enum.reduce(state.workers, 0, fn {_, w}, n -> n + w.capacity end)

  defp shed(state), do: %{bump(state, :shed) | admission: Admission.shed(state.admission)}

  @doc """
  How long (ms) a call queued now would wait, by the pool's typical run
  time: what an `:overloaded` refusal suggests waiting before a retry.
  """
  @spec expected_wait(t()) :: non_neg_integer()
  def expected_wait(state) do
    case Admission.estimate(state.admission, nil) do
      nil -> 0
      run -> round((:queue.len(state.queue) / max(slots(state), 1) + 0.5) * run)
    end
  end

  @doc """
  How long (ms) the queued `request` may still wait before it can no longer
  finish in time (`:infinity` when that cannot be told).
  """
  @spec patience(t(), request()) :: timeout()
  def patience(state, request), do: Admission.patience(state.admission, request, state.clock.())

  defp lease(state, request, id) do
    worker = state.workers[id]
    workers = Map.put(state.workers, id, %{worker | load: worker.load + 1})

    sessions =
      case Map.get(request, :session_id) do
        nil ->
          state.sessions

        session ->
          strict = Placement.affinity(state, request) != :hint
          Map.put(state.sessions, session, {id, worker.pid, Map.get(request, :now, 0), strict})
      end

    at = state.clock.()
    lease = Map.merge(request, %{worker_id: id, granted_at: at})

    %{
      state
      | workers: workers,
        sessions: sessions,
        leases: Map.put(state.leases, request.ref, lease),
        busy: state.busy + 1,
        demand: Map.put(state.demand, state.busy + 1, at)
    }
    |> bump(:requests)
  end

  @doc """
  Returns the slot held by `ref` (`outcome` `:error` counts an error) and
  hands freed slots to waiting requests. Returns the actions to carry out.
  """
  @spec checkin(t(), reference(), :ok | :error) :: {[action()], t()}
  def checkin(state, ref, outcome \\ :ok) do
    case Map.pop(state.leases, ref) do
      {nil, _} ->
        {[], state}

      {lease, leases} ->
        state = %{state | leases: leases} |> observe(lease, outcome)
        state = if outcome == :error, do: bump(state, :errors), else: state
        id = lease.worker_id

        case state.workers do
          %{^id => %{status: :active} = w} ->
            w = %{w | load: w.load - 1}

            dispatch(%{
              state
              | workers: Map.put(state.workers, id, w),
                free: :queue.in(id, state.free),
                busy: state.busy - 1
            })

          %{^id => w} ->
            w = %{w | load: w.load - 1}
            state = %{state | workers: Map.put(state.workers, id, w), busy: state.busy - 1}
            {stop, state} = Draining.maybe_stop(state, w, [])
            {actions, state} = dispatch(state)
            {stop ++ actions, state}

          _ ->
            dispatch(state)
        end
    end
  end

  @doc """
  Grants free slots to queued requests, oldest first, affinity-aware: a
  request pinned to a busy worker keeps its place while younger requests
  that may run anywhere go ahead. Requests whose pinned worker is gone are
  rejected.
  """
  @spec dispatch(t()) :: {[action()], t()}
  def dispatch(state), do: dispatch(state, false)

  defp dispatch(state, rescan) do
    {actions, skipped, state} = dispatch_loop(state, rescan, [], [])
    queue = :queue.join(:queue.from_list(Enum.reverse(skipped)), state.queue)
    {Enum.reverse(actions), backlog(%{state | queue: queue})}
  end

  defp backlog(%{backlog_since: nil} = state), do: state

  defp backlog(state),
    do: if(:queue.is_empty(state.queue), do: %{state | backlog_since: nil}, else: state)

  @doc """
  How long (ms) calls have been waiting without the queue emptying once
  (0 with an empty queue): a standing queue, not a blip.
  """
  @spec backlog_ms(t()) :: non_neg_integer()
  def backlog_ms(%{backlog_since: nil}), do: 0
  def backlog_ms(state), do: max(state.clock.() - state.backlog_since, 0)

  defp dispatch_loop(state, rescan, actions, skipped) do
    if not rescan and :queue.is_empty(state.free) and state.retiring == 0 do
      {actions, skipped, state}
    else
      case :queue.out(state.queue) do
        {:empty, _} ->
          {actions, skipped, state}

        {{:value, ref}, rest} ->
          state = %{state | queue: rest}
          request = Map.fetch!(state.waiting, ref)

          case viable_pick(state, request) do
            {:ok, id, state} ->
              state = %{lease(state, request, id) | waiting: Map.delete(state.waiting, ref)}

              dispatch_loop(
                state,
                rescan,
                [{:grant, request, state.workers[id]} | actions],
                skipped
              )

            {:wait, state} ->
              dispatch_loop(state, rescan, actions, [ref | skipped])

            {:error, reason, state} ->
              state = %{state | waiting: Map.delete(state.waiting, ref)}
              dispatch_loop(state, rescan, [{:reject, request, reason} | actions], skipped)
          end
      end
    end
  end

  # A queued request that can no longer finish in time is refused rather
  # than handed a worker.
  defp viable_pick(state, request) do
    if Admission.viable?(state.admission, request, state.clock.()),
      do: Placement.pick(state, request),
      else: {:error, :overloaded, shed(state)}
  end

  @doc """
  Drops a queued request (timed out, or its caller died). `{:dropped,
  request, state}` when it was still waiting, `{:not_queued, state}` if not.
  """
  @spec cancel(t(), reference(), :timeout | :overloaded | :caller_down) ::
          {:dropped, request(), t()} | {:not_queued, t()}
  def cancel(state, ref, why) do
    case Map.pop(state.waiting, ref) do
      {nil, _} ->
        {:not_queued, state}

      {request, waiting} ->
        state = backlog(%{state | waiting: waiting, queue: :queue.delete(ref, state.queue)})

        state =
          case why do
            :timeout -> bump(state, :queue_timeouts)
            :overloaded -> shed(state)
            _ -> state
          end

        {:dropped, request, state}
    end
  end

  @doc "Adds `fields` to a waiting request (e.g. the pool's timer for it)."
  @spec annotate_waiting(t(), reference(), map()) :: t()
  def annotate_waiting(state, ref, fields) do
    case state.waiting do
      %{^ref => request} ->
        %{state | waiting: Map.put(state.waiting, ref, Map.merge(request, fields))}

      _ ->
        state
    end
  end

  @doc "Adds `fields` to the lease `ref` (e.g. that its call is being stopped)."
  @spec annotate_lease(t(), reference(), map()) :: t()
  def annotate_lease(state, ref, fields) do
    case state.leases do
      %{^ref => lease} -> %{state | leases: Map.put(state.leases, ref, Map.merge(lease, fields))}
      _ -> state
    end
  end

  @doc "Does `ref` hold a slot?"
  @spec leased?(t(), reference()) :: boolean()
  def leased?(state, ref), do: Map.has_key?(state.leases, ref)

  # A finished call's run time feeds the estimates; a cancelled one (it
  # was stopped, not finished) does not.
  defp observe(state, %{granted_at: at} = lease, outcome) when outcome in [:ok, :error] do
    run_ms = state.clock.() - at
    %{state | admission: Admission.observe(state.admission, Map.get(lease, :command), run_ms)}
  end

  defp observe(state, _lease, _outcome), do: state

  defp bump(state, key), do: %{state | stats: Map.update!(state.stats, key, &(&1 + 1))}
end
