defmodule Snakepit.Pool do
  @moduledoc """
  Hands out the workers of one or more named pools.

  One `Snakepit.Pool` process manages every configured pool (see
  `Snakepit.Config`). It starts each pool's workers through the pool's
  `Snakepit.WorkerProfile`, in batches, and leases a worker slot to each
  request, or queues it, bounded and with a timeout it enforces itself, so
  a caller always gets exactly one answer. The call itself runs in the
  caller's process, straight through the native core: the pool never sits
  between a caller and its worker's reply. When the call ends the caller
  sends the slot back.

  Pools are independent: a pool whose workers fail to start, or whose queue
  is full, never delays requests to another pool. Pick a pool per call with
  the `pool:` option.

  ## Timeouts

  A call has one total budget, `:timeout` (default
  `get_default_timeout_for_call/3`), or an absolute `:deadline_ms`
  (`System.monotonic_time(:millisecond)`). Out of it:

    * the time it may wait in the queue is the pool's `queue_timeout`,
      capped by what is left of the budget (`effective_queue_timeout_ms/2`);
    * the call to Python gets what is left once it has a worker, minus the
      margins of `Snakepit.Defaults.rpc_timeout/1`
      (`derive_rpc_timeout_from_opts/2`), so it times out before the caller
      would.

  A request that timed out in the queue is never executed.

  ## Affinity, crashes, recycling

  Scheduling decisions (session affinity modes, tainted workers, retiring
  workers) are pure functions in `Snakepit.Pool.State`. Calls whose worker
  dies under them go through `Snakepit.CrashBarrier`. Workers are recycled
  by `Snakepit.Worker.LifecycleManager` through `recycle_worker/4`: the
  replacement starts first and the old worker retires once its in-flight
  requests are done.
  """
  use GenServer

  alias Snakepit.{Config, CrashBarrier, Deadline, Defaults, Error, ExitStatus, Telemetry}
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.GRPC.Client
  alias Snakepit.{GRPCWorker, Native}
  alias Snakepit.Pool.{State, WorkerSupervisor}
  alias Snakepit.Pool.Worker.Starter
  alias Snakepit.Worker.LifecycleManager

  # The pool answers a queued request itself when its queue time is up; the
  # caller's own wait is this much longer, as a safety net only.
  @checkout_slack_ms 1_000
  # How long a caller whose call failed at the transport level waits to
  # learn whether its worker's process died (a crash) or not.
  @crash_confirm_ms 1_000
  @transport_statuses [:unavailable, :unknown, :internal, :cancelled, :aborted, :data_loss]

  @type lease :: %{
          ref: reference(),
          request_id: String.t(),
          pool: atom(),
          pool_pid: pid(),
          worker: map(),
          crash_barrier: map()
        }

  # -- client API (runs in the caller) ------------------------------------------

  @doc false
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Runs `command` with `args` on a worker. Options:

    * `:pool` - pool name (default: the first configured pool)
    * `:timeout` - total budget in ms (default `get_default_timeout_for_call(:execute, ...)`)
    * `:deadline_ms` - absolute deadline (monotonic ms); the earlier of it and `:timeout` applies
    * `:session_id` - session affinity; `:affinity` overrides the pool's mode
    * `:idempotent` - `true` lets the crash barrier retry the call on another worker
      (as does `idempotent: true` in `args`)
    * `:metadata`, `:binary_parameters` - passed to the worker
  """
  @spec execute(String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute(command, args, opts \\ []) do
    total = get_default_timeout_for_call(:execute, args, opts)

    with :ok <- validate_call(command, args, total) do
      deadline = Deadline.of(opts, total)
      idempotent = Keyword.get(opts, :idempotent) == true or CrashBarrier.idempotent?(args)

      started = System.monotonic_time()

      attempt(opts, deadline, idempotent, 0, [], fn lease ->
        result = Client.execute(lease.worker, command, args, call_opts(opts, lease, deadline))
        emit_executed(lease, command, result, started)
        result
      end)
    end
  end

  # Queueing included: the time the caller waited for its answer.
  defp emit_executed(lease, command, result, started) do
    duration_us =
      System.convert_time_unit(System.monotonic_time() - started, :native, :microsecond)

    Telemetry.emit([:snakepit, :request, :executed], %{duration_us: duration_us}, %{
      pool: lease.pool,
      worker_id: lease.worker.id,
      command: command,
      success: match?({:ok, _}, result)
    })
  end

  @doc """
  Runs a streaming `command`, calling `callback` with each chunk. Options as

  `execute/3`; the default budget is `Snakepit.Defaults.pool_streaming_timeout/0`
  and the queue budget `Snakepit.Defaults.checkout_timeout/0`. Streams are
  never retried.
  """
  @spec execute_stream(String.t(), map(), (map() -> term()), keyword()) ::
          :ok | {:error, Error.t()}
  def execute_stream(command, args, callback, opts \\ []) do
    total = get_default_timeout_for_call(:execute_stream, args, opts)

    with :ok <- validate_call(command, args, total),
         :ok <- validate_callback(callback) do
      deadline = Deadline.of(opts, total)
      opts = Keyword.put_new(opts, :queue_timeout, Defaults.checkout_timeout())

      with {:ok, lease} <- checkout(opts, deadline) do
        call_opts = call_opts(opts, lease, deadline)
        # Checked in whatever happens, a raising callback included; a
        # stream that did not end is stopped before its slot is reused.
        {result, ended} =
          try do
            Client.stream(lease.worker, command, args, callback, call_opts)
          rescue
            e ->
              checkin(lease, :cancel)
              reraise e, __STACKTRACE__
          catch
            kind, reason ->
              checkin(lease, :cancel)
              :erlang.raise(kind, reason, __STACKTRACE__)
          end

        result = confirm_crash(result, lease)
        checkin(lease, if(ended == :ended, do: result, else: :cancel))
        result
      end
    end
  end

  # One attempt of a call; a crash of its worker may lead to another
  # attempt, on another worker, when the crash barrier allows it.
  defp attempt(opts, deadline, idempotent, n, avoid, fun) do
    opts = if avoid == [], do: opts, else: Keyword.put(opts, :avoid, avoid)

    with {:ok, lease} <- checkout(opts, deadline) do
      result = fun.(lease) |> confirm_crash(lease)
      checkin(lease, result)

      case CrashBarrier.crash_info(result, lease.crash_barrier) do
        nil ->
          result

        info ->
          config = lease.crash_barrier

          if CrashBarrier.retry_allowed?(config, idempotent, n) and
               Deadline.remaining(deadline) > 0 do
            backoff = CrashBarrier.retry_backoff(config, n)

            Telemetry.emit(
              [:snakepit, :crash_barrier, :retry],
              %{attempt: n + 1, backoff_ms: backoff},
              %{pool: lease.pool, worker_id: info.worker_id, classification: info.classification}
            )

            # A deliberate pause before the retry, not a wait for an event.
            Process.sleep(min(backoff, Deadline.remaining(deadline)))

            opts =
              Keyword.put(
                opts,
                :queue_timeout,
                Deadline.earliest(
                  Keyword.get(opts, :queue_timeout, :infinity),
                  Defaults.crash_barrier_checkout_timeout()
                )
              )

            attempt(opts, deadline, idempotent, n + 1, [info.worker_id | avoid], fun)
          else
            CrashBarrier.normalize_crash_error(result, info)
          end
      end
    end
  end

  # A transport failure may mean the worker's Python process died under
  # the call. Find out (the worker process stops when Python exits) and
  # report it as a crash.
  defp confirm_crash(
         {:error, %Error{category: :grpc_error, grpc_status: status} = error} = result,
         lease
       )
       when status in @transport_statuses do
    worker = lease.worker
    mref = Process.monitor(worker.pid)

    receive do
      {:DOWN, ^mref, :process, _, reason} ->
        {:error, crash_error(error, lease, ExitStatus.of_reason(reason))}
    after
      @crash_confirm_ms ->
        Process.demonitor(mref, [:flush])

        if Snakepit.Native.process_alive(worker.os_pid),
          do: result,
          else: {:error, crash_error(error, lease, :unknown)}
    end
  end

  defp confirm_crash(result, _lease), do: result

  defp crash_error(error, lease, status) do
    id = lease.worker.id

    Error.worker_error(
      "worker #{id} crashed during the call (it #{ExitStatus.describe(status)}): #{error.message}",
      Map.merge(error.details, %{
        reason: :worker_crash,
        worker_id: id,
        pool: lease.pool,
        exit_status: status
      })
    )
  end

  defp validate_call(command, args, timeout) do
    cond do
      not is_binary(command) or command == "" ->
        {:error,
         Error.validation_error("command must be a non-empty string, got: #{inspect(command)}")}

      not is_map(args) ->
        {:error, Error.validation_error("args must be a map, got: #{inspect(args)}")}

      not (timeout == :infinity or (is_integer(timeout) and timeout > 0)) ->
        {:error,
         Error.validation_error(
           "timeout must be a positive integer or :infinity, got: #{inspect(timeout)}"
         )}

      true ->
        :ok
    end
  end

  defp validate_callback(callback) when is_function(callback, 1), do: :ok

  defp validate_callback(other),
    do:
      {:error,
       Error.validation_error("callback must be a function of arity 1, got: #{inspect(other)}")}

  defp now, do: Deadline.now()

  # The call to Python gets the rpc deadline; a timed-out call is stopped
  # in the worker by its request id, learning how within the caller's own
  # deadline.
  defp call_opts(opts, lease, deadline) do
    opts
    |> Keyword.take([:session_id, :metadata, :binary_parameters])
    |> Keyword.merge(
      deadline: Deadline.rpc_deadline(deadline),
      stop_by: deadline,
      request_id: lease.request_id
    )
  end

  @doc """
  The total budget of a call of `call_type` (`:execute`, `:execute_stream`
  or `:queue`): `opts[:timeout]` when given, else the configured default.

      iex> Snakepit.Pool.get_default_timeout_for_call(:execute, %{}, timeout: 45_000)
      45_000
  """
  @spec get_default_timeout_for_call(atom(), map(), keyword()) :: timeout()
  def get_default_timeout_for_call(call_type, _args, opts) do
    case Keyword.get(opts, :timeout) do
      nil ->
        case call_type do
          :execute -> Defaults.pool_request_timeout()
          :execute_stream -> Defaults.pool_streaming_timeout()
          :queue -> Defaults.pool_queue_timeout()
        end

      timeout ->
        timeout
    end
  end

  @doc """
  The budget (ms) of the call to Python: `Snakepit.Defaults.rpc_timeout/1`
  of what remains until `opts[:deadline_ms]` when given, else of
  `opts[:timeout]`, else of `default_timeout`.

      iex> Snakepit.Pool.derive_rpc_timeout_from_opts([], 60_000)
      58_800
  """
  @spec derive_rpc_timeout_from_opts(keyword(), timeout()) :: timeout()
  def derive_rpc_timeout_from_opts(opts, default_timeout) do
    total =
      case Keyword.get(opts, :deadline_ms) do
        nil -> Keyword.get(opts, :timeout, default_timeout)
        :infinity -> Keyword.get(opts, :timeout, default_timeout)
        deadline -> Deadline.remaining(deadline)
      end

    Defaults.rpc_timeout(total)
  end

  @doc """
  How long (ms) a request may wait in the queue: `configured_queue_timeout`,
  capped by what remains until `opts[:deadline_ms]` when given.

      iex> Snakepit.Pool.effective_queue_timeout_ms([], 10_000)
      10_000
  """
  @spec effective_queue_timeout_ms(keyword(), timeout()) :: timeout()
  def effective_queue_timeout_ms(opts, configured) do
    case Keyword.get(opts, :deadline_ms) do
      nil -> configured
      :infinity -> configured
      deadline -> Deadline.queue_timeout(deadline, configured)
    end
  end

  defp resolve_pool(opts) do
    {server, name} =
      case Keyword.get(opts, :pool) do
        nil -> {__MODULE__, nil}
        pid when is_pid(pid) -> {pid, nil}
        __MODULE__ -> {__MODULE__, nil}
        {server, name} -> {server, name}
        name when is_atom(name) -> {Keyword.get(opts, :pool_server, __MODULE__), name}
      end

    case GenServer.whereis(server) do
      nil ->
        {:error,
         Error.pool_error("Snakepit pool #{inspect(server)} is not running", %{pool: server})}

      pid ->
        {:ok, pid, name}
    end
  end

  @doc false
  # Leases a worker slot. Options as `execute/3`, plus `:avoid` (worker ids
  # to keep away from) and `:queue_timeout` (a cap on the pool's own).
  @spec checkout(keyword(), integer() | :infinity) :: {:ok, lease()} | {:error, Error.t()}
  def checkout(opts, deadline) do
    with {:ok, pid, name} <- resolve_pool(opts) do
      ref = make_ref()
      session = Keyword.get(opts, :session_id)

      request = %{
        ref: ref,
        # Names the call in the worker, so it can be stopped there.
        request_id: Integer.to_string(System.unique_integer([:positive])),
        pool: name,
        session_id: session,
        affinity: Keyword.get(opts, :affinity),
        stored_worker: session && SessionStore.last_worker(session),
        avoid: Keyword.get(opts, :avoid, []),
        deadline: deadline,
        queue_cap: Keyword.get(opts, :queue_timeout, :infinity)
      }

      wait =
        if deadline == :infinity,
          do: :infinity,
          else: Deadline.remaining(deadline) + @checkout_slack_ms

      try do
        GenServer.call(pid, {:checkout, request}, wait)
      catch
        :exit, {:timeout, _} ->
          send(pid, {:cancel_checkout, name, ref})
          {:error, Error.timeout_error("no worker was free in time", %{pool: name})}

        :exit, reason ->
          {:error, Error.pool_error("pool is not available: #{inspect(reason)}", %{pool: name})}
      end
    end
  end

  @doc false
  # Gives the slot back. `result` is the call's result, or `:cancel` when
  # the call may still run in the worker (it timed out, its stream was
  # abandoned, its transport failed): the pool then stops it first.
  @spec checkin(lease(), term()) :: :ok
  def checkin(lease, result) do
    send(lease.pool_pid, {:checkin, lease.pool, lease.ref, checkin_outcome(result)})
    :ok
  end

  defp checkin_outcome(:cancel), do: :cancel

  defp checkin_outcome({:error, %Error{details: %{stop: stop}}})
       when stop in [:running, :unconfirmed],
       do: :cancel

  defp checkin_outcome({:error, %Error{category: :grpc_error, grpc_status: status}})
       when status in @transport_statuses,
       do: :cancel

  defp checkin_outcome({:error, _}), do: :error
  defp checkin_outcome(_ok), do: :ok

  @doc """
  Waits until the pools are ready for service: each has at least one ready
  worker. `pool` is the pool process (all its pools) or one pool's name.
  Returns `{:error, %Snakepit.Error{}}` naming the cause when a pool failed
  to start, or when `timeout` (default
  `Snakepit.Defaults.pool_await_ready_timeout/0`) passes first.
  """
  @spec await_ready(atom() | pid(), timeout() | nil) :: :ok | {:error, Error.t()}
  def await_ready(pool \\ __MODULE__, timeout \\ nil), do: await(pool, :ready, timeout)

  @doc """
  Waits until every worker of the pools has either started or failed (the
  start-up is over). Errors as `await_ready/2`.
  """
  @spec await_init_complete(atom() | pid(), timeout() | nil) :: :ok | {:error, Error.t()}
  def await_init_complete(pool \\ __MODULE__, timeout \\ nil), do: await(pool, :complete, timeout)

  defp await(pool, kind, timeout) do
    timeout = timeout || Defaults.pool_await_ready_timeout()
    {server, which} = server_and_pool(pool)

    try do
      GenServer.call(server, {:await, kind, which}, timeout)
    catch
      :exit, {:timeout, _} ->
        {:error, Error.timeout_error("pool not ready within #{timeout} ms", %{pool: pool})}

      :exit, {:noproc, _} ->
        {:error, Error.pool_error("Snakepit pool #{inspect(pool)} is not running", %{pool: pool})}

      :exit, reason ->
        {:error,
         Error.pool_error("pool stopped while starting: #{inspect(reason)}", %{pool: pool})}
    end
  end

  # A registered process (or pid) means "all its pools"; any other atom
  # names one pool of the default pool process.
  defp server_and_pool(pool) when is_pid(pool), do: {pool, :all}

  defp server_and_pool(pool) when is_atom(pool) do
    if pool == __MODULE__ or Process.whereis(pool) != nil,
      do: {pool, :all},
      else: {__MODULE__, pool}
  end

  defp server_and_pool({server, name}), do: {server, name}

  @doc """
  Statistics summed over every pool of `pool` (a pool process), or of one
  pool when `pool` is a pool's name: `requests`, `errors`, `queued`,
  `queue_timeouts`, `pool_saturated`, `workers`, `available`, `busy`.
  """
  @spec get_stats(atom() | pid()) :: map() | {:error, Error.t()}
  def get_stats(pool \\ __MODULE__) do
    {server, which} = server_and_pool(pool)
    GenServer.call(server, {:stats, which})
  end

  @doc "Statistics of the pool named `pool_name` of the pool process `pool`."
  @spec get_stats(atom() | pid(), atom()) :: map() | {:error, Error.t()}
  def get_stats(pool, pool_name), do: GenServer.call(pool, {:stats, pool_name})

  @doc """
  Ids of the ready workers of every pool of `pool` (a pool process), or of
  one pool when `pool` is a pool's name.
  """
  @spec list_workers(atom() | pid()) :: [String.t()]
  def list_workers(pool \\ __MODULE__) do
    {server, which} = server_and_pool(pool)
    GenServer.call(server, {:list_workers, which})
  end

  @doc "Ids of the ready workers of the pool named `pool_name`."
  @spec list_workers(atom() | pid(), atom()) :: [String.t()]
  def list_workers(pool, pool_name), do: GenServer.call(pool, {:list_workers, pool_name})

  @doc """
  Replaces worker `worker_id` of `pool_name` with a fresh one: the
  replacement is started first; the old worker stops taking requests once
  it is ready and stops after its in-flight requests. `reason` is reported
  in the `[:snakepit, :worker, :recycled]` event.
  """
  @spec recycle_worker(GenServer.server(), atom(), String.t(), atom()) ::
          :ok | {:error, :not_found | :already_recycling}
  def recycle_worker(server \\ __MODULE__, pool_name, worker_id, reason \\ :manual),
    do: GenServer.call(server, {:recycle, pool_name, worker_id, reason})

  @doc "Requests worker `worker_id` of `pool_name` runs now."
  @spec worker_load(atom(), String.t()) :: non_neg_integer()
  def worker_load(pool_name, worker_id),
    do: GenServer.call(__MODULE__, {:worker_load, pool_name, worker_id})

  @doc false
  # Workers of every pool as {pool, id, pid, os_pid, config} (for the lifecycle manager).
  def worker_details(server \\ __MODULE__), do: GenServer.call(server, :worker_details)

  # -- server ----------------------------------------------------------------

  @impl true
  def init(opts) do
    pools =
      case Keyword.fetch(opts, :pools) do
        {:ok, pools} -> Config.normalize_all(pools)
        :error -> Config.get_pool_configs()
      end

    case pools do
      {:ok, configs} ->
        state = %{
          pools: Map.new(configs, &{&1.name, State.new(&1)}),
          order: Enum.map(configs, & &1.name),
          default: hd(configs).name,
          runtime: Map.new(configs, &{&1.name, runtime(&1)}),
          starters: %{},
          monitors: %{},
          callers: %{},
          # CancelTool calls in flight: ref => {pool, lease ref, worker pid, timer}
          stopping: %{},
          waiters: []
        }

        schedule_prune()
        {:ok, state, {:continue, :start_workers}}

      {:error, reason} ->
        {:stop, {:invalid_config, reason}}
    end
  end

  # Per-pool bookkeeping outside the pure state: startup batches, worker
  # numbering, replacements in progress.
  defp runtime(config) do
    {size, delay} =
      if Config.thread_profile?(config),
        do: {config.pool_size, 0},
        else: {config.startup_batch_size, config.startup_batch_delay_ms}

    %{
      profile: Config.get_profile_module(config),
      crash_barrier: CrashBarrier.config(config),
      pending: for(n <- 1..config.pool_size, do: worker_id(config.name, n)),
      next: config.pool_size + 1,
      batch_size: size,
      batch_delay: delay,
      batch: MapSet.new(),
      batch_timer: nil,
      replacing: %{},
      retiring: MapSet.new(),
      started_at: %{}
    }
  end

  defp worker_id(pool_name, n), do: "#{pool_name}_worker_#{n}"

  # Pool configs carry adapter_env (secrets): never in a crash report.
  @impl true
  def format_status(status), do: Snakepit.Redact.status(status)

  @impl true
  def handle_continue(:start_workers, state) do
    {:noreply, Enum.reduce(state.order, state, &start_batch(&2, &1))}
  end

  defp start_batch(state, name) do
    rt = state.runtime[name]
    rt = if rt.batch_timer, do: cancel_timer(rt), else: rt
    {batch, pending} = Enum.split(rt.pending, rt.batch_size)
    state = put_runtime(state, name, %{rt | pending: pending, batch: MapSet.new(batch)})
    state = Enum.reduce(batch, state, &start_worker(&2, name, &1))

    rt = state.runtime[name]

    if pending != [] do
      timer = Process.send_after(self(), {:next_batch, name}, rt.batch_delay)
      put_runtime(state, name, %{rt | batch_timer: timer})
    else
      state
    end
  end

  defp cancel_timer(rt) do
    Process.cancel_timer(rt.batch_timer)
    %{rt | batch_timer: nil}
  end

  # A batch is done when all its workers are ready or failed; the next one
  # starts then, or after the batch delay, whichever comes first.
  defp batch_settled(state, name, id) do
    rt = state.runtime[name]
    batch = MapSet.delete(rt.batch, id)
    state = put_runtime(state, name, %{rt | batch: batch})

    if MapSet.size(batch) == 0 and rt.pending != [] and MapSet.member?(rt.batch, id),
      do: start_batch(state, name),
      else: state
  end

  defp start_worker(state, pool_name, id) do
    pool = state.pools[pool_name]
    rt = state.runtime[pool_name]

    args = %{
      id: id,
      pool_name: pool_name,
      pool_pid: self(),
      config: pool.config
    }

    case rt.profile.start_worker(args) do
      {:ok, _worker} ->
        case Starter.whereis(id) do
          nil ->
            state

          starter ->
            ref = Process.monitor(starter)
            rt = %{rt | started_at: Map.put(rt.started_at, id, now())}

            %{state | starters: Map.put(state.starters, ref, {pool_name, id})}
            |> put_runtime(pool_name, rt)
        end

      {:error, reason} ->
        error =
          Error.worker_error("could not start worker #{id}: #{inspect(reason)}", %{worker_id: id})

        {actions, pool} = State.worker_failed(state.pools[pool_name], id, error)

        state
        |> put_pool(pool_name, pool)
        |> perform(pool_name, actions)
        |> batch_settled(pool_name, id)
        |> replacement_failed(pool_name, id)
        |> answer_waiters()
    end
  end

  @impl true
  def handle_call({:checkout, request}, {caller, _} = from, state) do
    name = request.pool || state.default

    case Map.fetch(state.pools, name) do
      :error ->
        {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})},
         state}

      {:ok, pool} ->
        mref = Process.monitor(caller)
        request = %{request | pool: name} |> Map.merge(%{from: from, mref: mref, now: now()})

        case State.checkout(pool, request) do
          {:granted, worker, pool} ->
            note_session(request, worker)

            {:reply, {:ok, lease(state, request, worker)},
             %{
               put_pool(state, name, pool)
               | callers: Map.put(state.callers, mref, {name, request.ref})
             }}

          {:queued, pool} ->
            timer = schedule_queue_timeout(request, pool.config.queue_timeout)
            pool = State.annotate_waiting(pool, request.ref, %{timer: timer})

            {:noreply,
             %{
               put_pool(state, name, pool)
               | callers: Map.put(state.callers, mref, {name, request.ref})
             }}

          {:error, reason, pool} ->
            Process.demonitor(mref, [:flush])
            {:reply, {:error, checkout_error(reason, pool, request)}, put_pool(state, name, pool)}
        end
    end
  end

  def handle_call({:await, kind, which}, from, state) do
    if which != :all and not Map.has_key?(state.pools, which) do
      {:reply, {:error, Error.pool_error("unknown pool #{inspect(which)}", %{pool: which})},
       state}
    else
      {:noreply, answer_waiters(%{state | waiters: [{from, kind, which} | state.waiters]})}
    end
  end

  def handle_call({:stats, :all}, _from, state) do
    stats =
      state.pools
      |> Map.values()
      |> Enum.map(&State.stats/1)
      |> Enum.reduce(&Map.merge(&1, &2, fn _k, a, b -> sum_stat(a, b) end))

    {:reply, stats, state}
  end

  def handle_call({:stats, name}, _from, state) do
    case Map.fetch(state.pools, name) do
      {:ok, pool} ->
        {:reply, State.stats(pool), state}

      :error ->
        {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})},
         state}
    end
  end

  def handle_call({:list_workers, which}, _from, state) do
    pools = if which == :all, do: Map.values(state.pools), else: List.wrap(state.pools[which])

    ids =
      for pool <- pools,
          {id, w} <- pool.workers,
          w.status == :active,
          do: id

    {:reply, Enum.sort(ids), state}
  end

  def handle_call({:worker_load, name, id}, _from, state) do
    load =
      case state.pools[name] do
        %{workers: %{^id => w}} -> w.load
        _ -> 0
      end

    {:reply, load, state}
  end

  def handle_call(:worker_details, _from, state) do
    details =
      for {name, pool} <- state.pools, {id, w} <- pool.workers do
        %{pool: name, id: id, pid: w.pid, os_pid: w.os_pid, config: pool.config}
      end

    {:reply, details, state}
  end

  def handle_call({:recycle, name, id, reason}, _from, state) do
    {reply, state} = recycle(state, name, id, reason)
    {:reply, reply, state}
  end

  defp recycle(state, name, id, reason) do
    case state.pools[name] do
      %{workers: %{^id => %{status: :active}}} ->
        rt = state.runtime[name]

        if MapSet.member?(rt.retiring, id) do
          {{:error, :already_recycling}, state}
        else
          new_id = worker_id(name, rt.next)

          rt = %{
            rt
            | next: rt.next + 1,
              replacing: Map.put(rt.replacing, new_id, {id, reason}),
              retiring: MapSet.put(rt.retiring, id)
          }

          Snakepit.Logger.info(:lifecycle, "recycling #{id} (#{reason}); replacement #{new_id}")
          {:ok, state |> put_runtime(name, rt) |> start_worker(name, new_id)}
        end

      _ ->
        {{:error, :not_found}, state}
    end
  end

  defp lease(state, request, worker) do
    %{
      ref: request.ref,
      request_id: request.request_id,
      pool: request.pool,
      pool_pid: self(),
      worker: worker,
      crash_barrier: state.runtime[request.pool].crash_barrier
    }
  end

  # The session store remembers the worker of each session, so affinity
  # survives pool restarts; written only when the worker changes.
  defp note_session(%{session_id: nil}, _worker), do: :ok
  defp note_session(%{stored_worker: id}, %{id: id}), do: :ok

  defp note_session(%{session_id: session}, worker),
    do: SessionStore.store_worker_session(session, worker.id)

  defp checkout_error(:pool_saturated, pool, _request) do
    Telemetry.emit(
      [:snakepit, :pool, :saturated],
      %{queue_size: :queue.len(pool.queue), max_queue_size: pool.config.max_queue_size},
      %{pool: pool.name}
    )

    Error.pool_error(
      "pool #{inspect(pool.name)} is saturated: #{pool.config.max_queue_size} requests already queued",
      %{pool: pool.name, reason: :pool_saturated}
    )
  end

  defp checkout_error(:pool_failed, pool, _request) do
    down = map_size(pool.down)

    Error.pool_error(
      "pool #{inspect(pool.name)} has no ready worker (#{down} of #{pool.expected} slots down, " <>
        "restarting with backoff): #{error_message(pool.startup_error)}",
      %{pool: pool.name, reason: :pool_failed, cause: pool.startup_error, slots_down: down}
    )
  end

  defp checkout_error(:worker_busy, pool, request) do
    worker = State.session_worker(pool, request.session_id)

    Error.pool_error(
      "worker #{worker} of session #{inspect(request.session_id)} is busy (affinity :strict_fail_fast)",
      %{pool: pool.name, reason: :worker_busy, worker_id: worker, session_id: request.session_id}
    )
  end

  defp checkout_error(:session_worker_unavailable, pool, request) do
    Error.pool_error(
      "the worker of session #{inspect(request.session_id)} is gone (it crashed, restarted or " <>
        "was recycled); its in-memory state is lost",
      %{pool: pool.name, reason: :session_worker_unavailable, session_id: request.session_id}
    )
  end

  defp error_message(%{message: m}), do: m
  defp error_message(other), do: inspect(other)

  defp schedule_queue_timeout(request, configured) do
    cap = Deadline.earliest(configured, request.queue_cap)

    case effective_queue_timeout_ms([deadline_ms: request.deadline], cap) do
      :infinity ->
        nil

      ms ->
        Process.send_after(self(), {:queue_timeout, request.pool, request.ref, ms}, ms)
    end
  end

  # A request that leaves the queue early no longer needs its timer.
  defp cancel_queue_timer(%{timer: timer}) when is_reference(timer),
    do: :erlang.cancel_timer(timer, async: true, info: false)

  defp cancel_queue_timer(_request), do: :ok

  @impl true
  def handle_info({:checkin, name, ref, :cancel}, state) do
    {:noreply, stop_call(state, name, ref, true)}
  end

  def handle_info({:checkin, name, ref, outcome}, state) do
    {:noreply, release(state, name, ref, outcome)}
  end

  # The worker's answer to a CancelTool the pool sent (stop_call/4).
  def handle_info({cref, reply}, state) when is_map_key(state.stopping, cref) do
    {{name, ref, worker, timer}, stopping} = Map.pop(state.stopping, cref)
    Process.cancel_timer(timer)
    state = %{state | stopping: stopping}

    case reply do
      {:ok, answer} when answer != "running" ->
        emit_stopped(name, worker, Client.stop_state(answer))
        {:noreply, release(state, name, ref, :error, false)}

      _still_running_or_unreachable ->
        {:noreply, hard_stop(state, name, worker)}
    end
  end

  def handle_info({:stop_timeout, cref}, state) when is_map_key(state.stopping, cref) do
    {{name, _ref, worker, _timer}, stopping} = Map.pop(state.stopping, cref)
    {:noreply, hard_stop(%{state | stopping: stopping}, name, worker)}
  end

  def handle_info({:queue_timeout, name, ref, ms}, state) do
    case State.cancel(state.pools[name], ref, :timeout) do
      {:dropped, request, pool} ->
        Process.demonitor(request.mref, [:flush])
        Telemetry.emit([:snakepit, :pool, :queue, :timeout], %{timeout_ms: ms}, %{pool: name})

        error =
          Error.timeout_error(
            "no worker of pool #{inspect(name)} was free within #{ms} ms",
            %{pool: name, reason: :queue_timeout, timeout_ms: ms}
          )

        GenServer.reply(request.from, {:error, error})

        {:noreply,
         %{put_pool(state, name, pool) | callers: Map.delete(state.callers, request.mref)}}

      {:not_queued, _pool} ->
        {:noreply, state}
    end
  end

  def handle_info({:cancel_checkout, name, ref}, state) do
    name = name || state.default

    state =
      case State.cancel(state.pools[name], ref, :caller_down) do
        {:dropped, request, pool} ->
          cancel_queue_timer(request)
          Process.demonitor(request.mref, [:flush])
          %{put_pool(state, name, pool) | callers: Map.delete(state.callers, request.mref)}

        {:not_queued, _} ->
          release(state, name, ref, :ok)
      end

    {:noreply, state}
  end

  def handle_info({:next_batch, name}, state) do
    rt = state.runtime[name]
    state = put_runtime(state, name, %{rt | batch_timer: nil})
    {:noreply, if(rt.pending != [], do: start_batch(state, name), else: state)}
  end

  def handle_info({:worker_ready, name, worker}, state) do
    ref = Process.monitor(worker.pid)
    rt = state.runtime[name]

    Telemetry.emit(
      [:snakepit, :worker, :initialized],
      %{initialization_time: now() - Map.get(rt.started_at, worker.id, now())},
      %{worker_id: worker.id, pool: name}
    )

    CrashBarrier.maybe_emit_restart(name, worker.id)

    LifecycleManager.track_worker(
      name,
      worker.id,
      worker.pid,
      lifecycle_config(state, name, worker)
    )

    state =
      %{state | monitors: Map.put(state.monitors, ref, {name, worker.id, worker.pid})}
      |> update_pool(name, &State.add_worker(&1, worker))
      |> batch_settled(name, worker.id)
      |> replacement_ready(name, worker.id)

    {actions, pool} = State.dispatch(state.pools[name])
    {:noreply, state |> put_pool(name, pool) |> perform(name, actions) |> answer_waiters()}
  end

  def handle_info({:worker_failed, name, id, error}, state) do
    Snakepit.Logger.error(:pool, "Snakepit worker #{id} failed to start: #{error.message}")

    if Map.has_key?(state.runtime[name].replacing, id) do
      # A failed replacement is not retried: the worker it was to replace
      # keeps serving.
      state = forget_starter(state, id)
      stop_async(id)

      {:noreply,
       state
       |> update_pool(name, &State.forget_slot(&1, id))
       |> replacement_failed(name, id)}
    else
      failing? = not Map.get(error.details, :transient, false)
      {actions, pool} = State.worker_failed(state.pools[name], id, error, failing?)

      {:noreply,
       state
       |> put_pool(name, pool)
       |> perform(name, actions)
       |> batch_settled(name, id)
       |> answer_waiters()}
    end
  end

  def handle_info({:worker_restarting, name, id, info}, state) do
    case state.pools[name] do
      nil ->
        {:noreply, state}

      pool ->
        {:noreply, put_pool(state, name, State.worker_restarting(pool, id, info))}
    end
  end

  def handle_info({:max_requests, name, id}, state) do
    {_reply, state} = recycle(state, name, id, :max_requests)
    {:noreply, state}
  end

  def handle_info({:untaint, name, id}, state) do
    {:noreply, update_pool(state, name, &State.untaint(&1, id))}
  end

  def handle_info(:prune_sessions, state) do
    older = now() - Defaults.session_default_ttl() * 1_000

    pools = Map.new(state.pools, fn {name, pool} -> {name, State.prune_sessions(pool, older)} end)
    schedule_prune()
    {:noreply, %{state | pools: pools}}
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    cond do
      Map.has_key?(state.callers, ref) ->
        {{name, req_ref}, callers} = Map.pop(state.callers, ref)
        {:noreply, caller_down(%{state | callers: callers}, name, req_ref)}

      Map.has_key?(state.monitors, ref) ->
        {{name, id, pid}, monitors} = Map.pop(state.monitors, ref)
        {:noreply, worker_down(%{state | monitors: monitors}, name, id, pid, reason)}

      Map.has_key?(state.starters, ref) ->
        {{name, id}, starters} = Map.pop(state.starters, ref)
        {:noreply, starter_down(%{state | starters: starters}, name, id, reason)}

      true ->
        {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp schedule_prune,
    do: Process.send_after(self(), :prune_sessions, Defaults.session_cleanup_interval())

  defp lifecycle_config(state, name, _worker),
    do: Snakepit.Worker.LifecycleConfig.ensure(name, state.pools[name].config)

  # A worker process ended: take it out of rotation. Its starter restarts
  # it unless it is being retired. A crash taints it when the pool's crash
  # barrier is on.
  defp worker_down(state, name, id, pid, reason) do
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
      state = state |> put_pool(name, pool) |> perform(name, actions)
      maybe_taint(state, name, id, info)
    else
      {actions, pool} = State.remove_worker(state.pools[name], id, pid)
      state |> put_pool(name, pool) |> perform(name, actions)
    end
  end

  defp maybe_taint(state, name, id, %{classification: classification} = info)
       when classification != :hard_stop do
    config = state.runtime[name].crash_barrier

    if CrashBarrier.enabled?(config) do
      CrashBarrier.taint_worker(name, id, info, config)
      Process.send_after(self(), {:untaint, name, id}, config.taint_ms)
      update_pool(state, name, &State.taint(&1, id))
    else
      state
    end
  end

  defp maybe_taint(state, _name, _id, _info), do: state

  # The pool demonitors a starter before stopping it, so a starter that
  # goes down on its own crashed: the slot gets a new one.
  defp starter_down(state, name, id, reason) do
    Snakepit.Logger.error(
      :pool,
      "the starter of worker #{id} stopped (#{inspect(reason)}); restarting it"
    )

    rt = state.runtime[name]

    if MapSet.member?(rt.retiring, id) do
      state
    else
      start_worker(state, name, id)
    end
  end

  defp forget_starter(state, id) do
    case Enum.find(state.starters, fn {_ref, {_name, sid}} -> sid == id end) do
      {ref, _} ->
        Process.demonitor(ref, [:flush])
        %{state | starters: Map.delete(state.starters, ref)}

      nil ->
        state
    end
  end

  # -- recycling --------------------------------------------------------------

  defp replacement_ready(state, name, new_id) do
    rt = state.runtime[name]

    case Map.pop(rt.replacing, new_id) do
      {nil, _} ->
        state

      {{old_id, reason}, replacing} ->
        state = put_runtime(state, name, %{rt | replacing: replacing})
        old = state.pools[name].workers[old_id]

        if old do
          Telemetry.emit(
            [:snakepit, :worker, :recycled],
            %{},
            %{
              worker_id: old_id,
              pool: name,
              reason: reason,
              replacement: new_id,
              uptime: now() - Map.get(rt.started_at, old_id, now()),
              request_count: LifecycleManager.request_count(old_id)
            }
          )
        end

        # An old worker already down (its starter restarting it) is
        # stopped for good; a live one retires after its requests.
        {actions, pool} =
          if old,
            do: State.retire(state.pools[name], old_id),
            else: {[{:stop_worker, %{id: old_id}}], state.pools[name]}

        state |> put_pool(name, pool) |> perform(name, actions)
    end
  end

  defp replacement_failed(state, name, new_id) do
    rt = state.runtime[name]

    case Map.pop(rt.replacing, new_id) do
      {nil, _} ->
        state

      {{old_id, reason}, replacing} ->
        Snakepit.Logger.error(
          :lifecycle,
          "replacement #{new_id} of #{old_id} (#{reason}) failed to start; #{old_id} keeps serving"
        )

        put_runtime(state, name, %{
          rt
          | replacing: replacing,
            retiring: MapSet.delete(rt.retiring, old_id)
        })
    end
  end

  defp perform(state, name, actions) do
    Enum.reduce(actions, state, fn
      {:grant, request, worker}, acc ->
        cancel_queue_timer(request)
        note_session(request, worker)
        GenServer.reply(request.from, {:ok, lease(acc, request, worker)})
        acc

      {:reject, request, reason}, acc ->
        cancel_queue_timer(request)
        Process.demonitor(request.mref, [:flush])
        GenServer.reply(request.from, {:error, checkout_error(reason, acc.pools[name], request)})
        %{acc | callers: Map.delete(acc.callers, request.mref)}

      {:stop_worker, worker}, acc ->
        acc = forget_starter(acc, worker.id)
        stop_async(worker.id)
        rt = acc.runtime[name]

        acc
        |> update_pool(name, &State.forget_slot(&1, worker.id))
        |> put_runtime(name, %{
          rt
          | retiring: MapSet.delete(rt.retiring, worker.id),
            started_at: Map.delete(rt.started_at, worker.id)
        })
    end)
  end

  # Stopping a worker waits for its Python process to exit; the pool must
  # not wait with it.
  defp stop_async(id) do
    Task.start(fn -> WorkerSupervisor.stop_worker_by_id(id) end)
  end

  # -- callers ----------------------------------------------------------------

  # A caller died: drop its queued request or take back its slot.
  defp caller_down(state, name, ref) do
    case State.cancel(state.pools[name], ref, :caller_down) do
      {:dropped, request, pool} ->
        cancel_queue_timer(request)
        put_pool(state, name, pool)

      {:not_queued, _} ->
        # Its call may still run in the worker: stop it there first.
        stop_call(state, name, ref, false)
    end
  end

  # A call may still run in its worker (its caller gave up or died): ask
  # the worker to stop it, keeping the slot leased meanwhile, so the worker
  # never runs more calls than its capacity. The slot comes back when the
  # worker says the call ended; when it still runs after cancel_grace_ms,
  # or the worker cannot be asked, the worker is killed and replaced.
  defp stop_call(state, name, ref, demonitor) do
    pool = state.pools[name]

    with %{^ref => lease} <- pool.leases,
         %{} = worker <- pool.workers[lease.worker_id] do
      if demonitor, do: Process.demonitor(lease.mref, [:flush])
      grace = Defaults.cancel_grace_ms()
      cref = make_ref()
      :ok = Native.grpc_cancel(worker.channel, self(), cref, lease.request_id, grace)
      timer = Process.send_after(self(), {:stop_timeout, cref}, grace + @crash_confirm_ms)

      %{
        state
        | callers: Map.delete(state.callers, lease.mref),
          stopping: Map.put(state.stopping, cref, {name, ref, worker.pid, timer})
      }
    else
      _ -> release(state, name, ref, :error, demonitor)
    end
  end

  defp hard_stop(state, name, worker_pid) do
    emit_stopped(name, worker_pid, :hard_stop)
    # Its leases go when it is down (worker_down/5).
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

  defp release(state, name, ref, outcome, demonitor \\ true) do
    pool = state.pools[name]

    state =
      case pool.leases do
        %{^ref => lease} ->
          if demonitor, do: Process.demonitor(lease.mref, [:flush])
          count_request(state, name, lease.worker_id)
          %{state | callers: Map.delete(state.callers, lease.mref)}

        _ ->
          state
      end

    {actions, pool} = State.checkin(state.pools[name], ref, outcome)
    state |> put_pool(name, pool) |> perform(name, actions)
  end

  defp count_request(state, name, id) do
    count = LifecycleManager.increment_request_count(id)

    case state.pools[name].config.worker_max_requests do
      max when is_integer(max) and count >= max -> send(self(), {:max_requests, name, id})
      _ -> :ok
    end
  end

  # -- readiness --------------------------------------------------------------

  defp answer_waiters(%{waiters: []} = state), do: state

  defp answer_waiters(state) do
    {answered, waiting} =
      Enum.split_with(state.waiters, fn {from, kind, which} ->
        case readiness(state, kind, which) do
          :waiting ->
            false

          reply ->
            GenServer.reply(from, reply)
            true
        end
      end)

    _ = answered
    %{state | waiters: waiting}
  end

  defp readiness(state, kind, which) do
    pools =
      if which == :all,
        do: Enum.map(state.order, &state.pools[&1]),
        else: [state.pools[which]]

    reached? =
      case kind do
        :ready -> &(&1.status == :ready)
        :complete -> &State.init_complete?/1
      end

    cond do
      failed = Enum.find(pools, &(&1.status == :failed)) ->
        {:error, checkout_error(:pool_failed, failed, %{})}

      Enum.all?(pools, reached?) ->
        :ok

      true ->
        :waiting
    end
  end

  # Counters add up across pools; per-slot maps (`down`) merge.
  defp sum_stat(a, b) when is_map(a), do: Map.merge(a, b)
  defp sum_stat(a, b), do: a + b

  defp put_pool(state, name, pool), do: %{state | pools: Map.put(state.pools, name, pool)}
  defp update_pool(state, name, fun), do: put_pool(state, name, fun.(state.pools[name]))
  defp put_runtime(state, name, rt), do: %{state | runtime: Map.put(state.runtime, name, rt)}
end
