defmodule Snakepit.Pool do
  @moduledoc """
  Hands out workers of one or more named pools.

  One `Snakepit.Pool` process manages every configured pool. It starts each
  pool's workers concurrently, leases a worker slot to each request (or
  queues it, bounded and with a timeout it enforces itself, so a caller gets
  exactly one answer), and takes the slot back when the call ends. The call
  itself runs in the caller's process, straight through the native core:
  the pool never sits between a caller and its worker's reply.

  Scheduling decisions are pure functions in `Snakepit.Pool.State`.
  """
  use GenServer

  require Logger

  alias Snakepit.{Config, Defaults, Error, Telemetry}
  alias Snakepit.GRPC.Client
  alias Snakepit.Pool.{State, WorkerSupervisor}

  # The pool answers a queued request itself when its queue time is up; the
  # caller's own wait is this much longer, as a safety net only.
  @checkout_slack_ms 1_000

  @type lease :: %{ref: reference(), pool: atom(), pool_pid: pid(), worker: map()}

  # -- client API (runs in the caller) ------------------------------------------

  @doc false
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Runs `command` with `args` on a worker of the pool given by `opts[:pool]`
  (a pool name; the default pool when absent). See `Snakepit.execute/3`.
  """
  @spec execute(String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute(command, args, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, Defaults.default_timeout())

    with :ok <- validate_call(command, args, timeout) do
      deadline = deadline_after(timeout)

      with_lease(opts, deadline, fn lease ->
        Client.execute(lease.worker, command, args, call_opts(opts, deadline))
      end)
    end
  end

  @doc "Runs a streaming `command`, calling `callback` with each chunk. See `Snakepit.execute_stream/4`."
  @spec execute_stream(String.t(), map(), (map() -> term()), keyword()) ::
          :ok | {:error, Error.t()}
  def execute_stream(command, args, callback, opts \\ []) do
    timeout = Keyword.get(opts, :timeout, Defaults.stream_timeout())

    with :ok <- validate_call(command, args, timeout),
         :ok <- validate_callback(callback) do
      deadline = deadline_after(timeout)

      with_lease(opts, deadline, fn lease ->
        Client.execute_stream(lease.worker, command, args, callback, call_opts(opts, deadline))
      end)
    end
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

  defp deadline_after(:infinity), do: :infinity
  defp deadline_after(ms), do: System.monotonic_time(:millisecond) + ms

  @doc false
  def remaining(:infinity), do: :infinity
  def remaining(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)

  defp call_opts(opts, deadline) do
    opts
    |> Keyword.take([:session_id, :metadata, :binary_parameters])
    |> Keyword.put(:deadline, deadline)
  end

  # Leases a worker, runs `fun` with it and always gives the slot back.
  defp with_lease(opts, deadline, fun) do
    with {:ok, lease} <- checkout(opts, deadline) do
      result = fun.(lease)
      checkin(lease, result)
      result
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
  @spec checkout(keyword(), integer() | :infinity) :: {:ok, lease()} | {:error, Error.t()}
  def checkout(opts, deadline) do
    queue_timeout =
      effective_queue_timeout_ms(
        Keyword.put(opts, :deadline_ms, deadline),
        Defaults.queue_timeout()
      )

    with {:ok, pid, name} <- resolve_pool(opts) do
      ref = make_ref()

      request = %{
        ref: ref,
        pool: name,
        session_id: Keyword.get(opts, :session_id),
        queue_timeout: queue_timeout
      }

      wait =
        if queue_timeout == :infinity, do: :infinity, else: queue_timeout + @checkout_slack_ms

      try do
        GenServer.call(pid, {:checkout, request}, wait)
      catch
        :exit, {:timeout, _} ->
          send(pid, {:cancel_checkout, name, ref})

          {:error,
           Error.timeout_error("no worker was free within #{queue_timeout} ms", %{pool: name})}

        :exit, reason ->
          {:error, Error.pool_error("pool is not available: #{inspect(reason)}", %{pool: name})}
      end
    end
  end

  @doc false
  @spec checkin(lease(), term()) :: :ok
  def checkin(lease, result) do
    outcome = if match?({:error, _}, result), do: :error, else: :ok
    send(lease.pool_pid, {:checkin, lease.pool, lease.ref, outcome})
    :ok
  end

  @doc """
  Queue time a request may spend, capped by what is left of its
  `:deadline_ms` (monotonic milliseconds) when one is given.
  """
  @spec effective_queue_timeout_ms(keyword(), timeout()) :: timeout()
  def effective_queue_timeout_ms(opts, configured) do
    case Keyword.get(opts, :deadline_ms) do
      nil -> configured
      :infinity -> configured
      deadline when configured == :infinity -> remaining(deadline)
      deadline -> min(configured, remaining(deadline))
    end
  end

  @doc """
  Waits until every pool has at least one ready worker. Returns
  `{:error, %Snakepit.Error{}}` naming the cause when a pool failed to
  start, or when `timeout` passes first.
  """
  @spec await_ready(atom() | pid(), timeout() | nil) :: :ok | {:error, Error.t()}
  def await_ready(pool \\ __MODULE__, timeout \\ nil), do: await(pool, :ready, timeout)

  @doc """
  Waits until every worker of every pool has either started or failed
  (the pool's start-up is over). Errors as `await_ready/2`.
  """
  @spec await_init_complete(atom() | pid(), timeout() | nil) :: :ok | {:error, Error.t()}
  def await_init_complete(pool \\ __MODULE__, timeout \\ nil), do: await(pool, :complete, timeout)

  defp await(pool, kind, timeout) do
    timeout = timeout || Defaults.pool_startup_timeout() * 3

    try do
      GenServer.call(pool, {:await, kind}, timeout)
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

  @doc "Statistics summed over every pool (`get_stats/2` for one pool)."
  @spec get_stats(atom() | pid()) :: map()
  def get_stats(pool \\ __MODULE__), do: GenServer.call(pool, {:stats, :all})

  @doc "Statistics of the pool named `pool_name`."
  @spec get_stats(atom() | pid(), atom()) :: map() | {:error, Error.t()}
  def get_stats(pool, pool_name), do: GenServer.call(pool, {:stats, pool_name})

  @doc "Ids of every ready worker (`list_workers/2` for one pool)."
  @spec list_workers(atom() | pid()) :: [String.t()]
  def list_workers(pool \\ __MODULE__), do: GenServer.call(pool, {:list_workers, :all})

  @spec list_workers(atom() | pid(), atom()) :: [String.t()]
  def list_workers(pool, pool_name), do: GenServer.call(pool, {:list_workers, pool_name})

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
          default: hd(configs).name,
          starters: %{},
          monitors: %{},
          ready_waiters: []
        }

        {:ok, state, {:continue, :start_workers}}

      {:error, reason} ->
        {:stop, {:invalid_config, reason}}
    end
  end

  @impl true
  def handle_continue(:start_workers, state) do
    state =
      Enum.reduce(state.pools, state, fn {name, pool}, acc ->
        Enum.reduce(1..pool.expected, acc, fn n, acc ->
          start_worker(acc, name, worker_id(name, n))
        end)
      end)

    {:noreply, state}
  end

  defp worker_id(pool_name, n), do: "#{pool_name}_worker_#{n}"

  defp start_worker(state, pool_name, id) do
    config = Map.put(state.pools[pool_name].config, :pool_pid, self())

    case WorkerSupervisor.start_worker(id, Snakepit.GRPCWorker, nil, pool_name, config) do
      {:ok, starter} ->
        ref = Process.monitor(starter)
        %{state | starters: Map.put(state.starters, ref, {pool_name, id})}

      {:error, reason} ->
        error =
          Error.worker_error("could not start worker #{id}: #{inspect(reason)}", %{worker_id: id})

        update_pool(state, pool_name, &State.worker_failed(&1, id, error))
        |> answer_ready_waiters()
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
        request = Map.merge(request, %{pool: name, from: from, mref: Process.monitor(caller)})

        case State.checkout(pool, request) do
          {:granted, worker, pool} ->
            {:reply, {:ok, lease(request, worker)}, put_pool(state, name, pool)}

          {:queued, pool} ->
            schedule_queue_timeout(request)
            {:noreply, put_pool(state, name, pool)}

          {:error, reason, pool} ->
            Process.demonitor(request.mref, [:flush])
            {:reply, {:error, checkout_error(reason, pool)}, put_pool(state, name, pool)}
        end
    end
  end

  def handle_call({:await, kind}, from, state) do
    {:noreply,
     answer_ready_waiters(%{state | ready_waiters: [{from, kind} | state.ready_waiters]})}
  end

  def handle_call({:stats, :all}, _from, state) do
    stats =
      state.pools
      |> Map.values()
      |> Enum.map(&State.stats/1)
      |> Enum.reduce(&Map.merge(&1, &2, fn _k, a, b -> a + b end))

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
    {:reply, pools |> Enum.flat_map(&Map.keys(&1.workers)) |> Enum.sort(), state}
  end

  defp lease(request, worker),
    do: %{ref: request.ref, pool: request.pool, pool_pid: self(), worker: worker}

  defp checkout_error(:pool_saturated, pool) do
    Telemetry.emit(
      [:snakepit, :pool, :saturated],
      %{queue_size: :queue.len(pool.queue), max_queue_size: pool.config.max_queue_size},
      %{pool: pool.name}
    )

    Error.pool_error(
      "pool #{inspect(pool.name)} is saturated: #{pool.config.max_queue_size} requests already queued",
      %{
        pool: pool.name,
        reason: :pool_saturated
      }
    )
  end

  defp checkout_error(:pool_failed, pool) do
    Error.pool_error(
      "pool #{inspect(pool.name)} failed to start: #{error_message(pool.startup_error)}",
      %{
        pool: pool.name,
        reason: :pool_failed,
        cause: pool.startup_error
      }
    )
  end

  defp error_message(%{message: m}), do: m
  defp error_message(other), do: inspect(other)

  defp schedule_queue_timeout(%{queue_timeout: :infinity}), do: :ok

  defp schedule_queue_timeout(request) do
    Process.send_after(self(), {:queue_timeout, request.pool, request.ref}, request.queue_timeout)
  end

  @impl true
  def handle_info({:checkin, name, ref, outcome}, state) do
    {:noreply, release(state, name, ref, outcome)}
  end

  def handle_info({:queue_timeout, name, ref}, state) do
    case State.cancel(state.pools[name], ref, :timeout) do
      {:dropped, request, pool} ->
        Process.demonitor(request.mref, [:flush])

        Telemetry.emit(
          [:snakepit, :pool, :queue, :timeout],
          %{timeout_ms: request.queue_timeout},
          %{pool: name}
        )

        error =
          Error.timeout_error(
            "no worker of pool #{inspect(name)} was free within #{request.queue_timeout} ms",
            %{pool: name, reason: :queue_timeout}
          )

        GenServer.reply(request.from, {:error, error})
        {:noreply, put_pool(state, name, pool)}

      {:not_queued, _pool} ->
        {:noreply, state}
    end
  end

  def handle_info({:cancel_checkout, name, ref}, state) do
    name = name || state.default

    state =
      case State.cancel(state.pools[name], ref, :caller_down) do
        {:dropped, request, pool} ->
          Process.demonitor(request.mref, [:flush])
          put_pool(state, name, pool)

        {:not_queued, _} ->
          release(state, name, ref, :ok)
      end

    {:noreply, state}
  end

  def handle_info({:worker_ready, name, worker}, state) do
    ref = Process.monitor(worker.pid)
    state = %{state | monitors: Map.put(state.monitors, ref, {name, worker.id, worker.pid})}
    state = update_pool(state, name, &State.add_worker(&1, worker))
    {grants, pool} = State.dispatch(state.pools[name])
    send_grants(grants)
    {:noreply, state |> put_pool(name, pool) |> answer_ready_waiters()}
  end

  def handle_info({:worker_failed, name, id, error}, state) do
    Logger.error("Snakepit worker #{id} failed to start: #{error.message}")
    # A worker that cannot start is not restarted in a loop: its starter goes.
    state = forget_starter(state, id)
    WorkerSupervisor.stop_worker_by_id(id)

    {:noreply,
     state |> update_pool(name, &State.worker_failed(&1, id, error)) |> answer_ready_waiters()}
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    cond do
      Map.has_key?(state.monitors, ref) ->
        {{name, id, pid}, monitors} = Map.pop(state.monitors, ref)

        {:noreply,
         update_pool(%{state | monitors: monitors}, name, &State.remove_worker(&1, id, pid))}

      Map.has_key?(state.starters, ref) ->
        {{name, id}, starters} = Map.pop(state.starters, ref)
        {:noreply, starter_down(%{state | starters: starters}, name, id, reason)}

      true ->
        {:noreply, caller_down(state, ref)}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # The pool demonitors a starter before stopping it, so a starter that goes
  # down on its own gave up after repeated worker crashes. That counts as a
  # failed worker: a pool whose workers can never run fails await_ready
  # instead of hanging it.
  defp starter_down(state, name, id, reason) do
    error =
      Error.worker_error("worker #{id} kept crashing and was given up: #{inspect(reason)}", %{
        worker_id: id
      })

    Logger.error(error.message)
    state |> update_pool(name, &State.worker_failed(&1, id, error)) |> answer_ready_waiters()
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

  # A caller died: drop its queued request or take back its slot.

  defp caller_down(state, mref) do
    Enum.reduce(state.pools, state, fn {name, pool}, acc ->
      queued = Enum.find(pool.waiting, fn {_ref, r} -> r.mref == mref end)
      leased = Enum.find(pool.leases, fn {_ref, l} -> l.mref == mref end)

      cond do
        queued ->
          {:dropped, _, pool} = State.cancel(pool, elem(queued, 0), :caller_down)
          put_pool(acc, name, pool)

        leased ->
          release(acc, name, elem(leased, 0), :error)

        true ->
          acc
      end
    end)
  end

  defp release(state, name, ref, outcome) do
    pool = state.pools[name]

    case pool.leases do
      %{^ref => lease} -> Process.demonitor(lease.mref, [:flush])
      _ -> :ok
    end

    {grants, pool} = State.checkin(pool, ref, outcome)
    send_grants(grants)
    put_pool(state, name, pool)
  end

  defp send_grants(grants) do
    for {request, worker} <- grants,
        do: GenServer.reply(request.from, {:ok, lease(request, worker)})
  end

  defp answer_ready_waiters(%{ready_waiters: []} = state), do: state

  defp answer_ready_waiters(state) do
    pools = Map.values(state.pools)
    failed = Enum.find(pools, &(&1.status == :failed))

    reached? = %{
      ready: Enum.all?(pools, &(&1.status == :ready)),
      complete: Enum.all?(pools, &State.init_complete?/1)
    }

    {answered, waiting} =
      Enum.split_with(state.ready_waiters, fn {_from, kind} -> failed != nil or reached?[kind] end)

    reply = if failed, do: {:error, checkout_error(:pool_failed, failed)}, else: :ok
    Enum.each(answered, fn {from, _} -> GenServer.reply(from, reply) end)
    %{state | ready_waiters: waiting}
  end

  defp put_pool(state, name, pool), do: %{state | pools: Map.put(state.pools, name, pool)}
  defp update_pool(state, name, fun), do: put_pool(state, name, fun.(state.pools[name]))
end
