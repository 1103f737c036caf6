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

  ## Size

  A pool keeps a size in `min_workers..max_workers` (a fixed pool:
  `pool_size..pool_size`). An elastic pool grows while calls wait and
  shrinks after `scale_down_after_ms` without need (`Snakepit.Pool.Scaling`);
  `resize/2` sets the size at run time, `restart/2` replaces every worker
  while the pool serves. Workers that leave drain first. See "Pools that
  breathe" in `docs/pools.md`.
  """

  alias Snakepit.{Defaults, Error}
  alias Snakepit.Pool.{Call, Checkout, Deadline}

  @type lease :: Checkout.lease()

  # -- client API (runs in the caller) ------------------------------------------

  @doc false
  def start_link(opts \\ []) do
    GenServer.start_link(Snakepit.Pool.Server, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  A pool for your own supervision tree:

      children = [
        {Snakepit.Pool, name: :ml, pool_size: 2, adapter_args: ["--adapter", "my_app.Model"]}
      ]

  Every per-pool key of `Snakepit.Config` is accepted; `name` is the pool's
  name (`Snakepit.execute(..., pool: :ml)`). It runs beside the configured
  pools, or alone with `config :snakepit, pooling_enabled: false`, and
  stops its workers when its supervisor stops it (`Snakepit.Pool.Tree`).
  In tests: `start_supervised!({Snakepit.Pool, name: :test_pool, ...})`.

  Without `name:` (or with `pools:`), the spec is the application's own
  pool process, serving the configured pools.
  """
  def child_spec(opts) when is_list(opts) do
    case Keyword.get(opts, :name) do
      name when is_atom(name) and name not in [nil, __MODULE__] ->
        if Keyword.has_key?(opts, :pools) do
          %{id: name, start: {__MODULE__, :start_link, [opts]}}
        else
          %{
            id: {__MODULE__, name},
            start: {Snakepit.Pool.Tree, :start_link, [opts]},
            type: :supervisor
          }
        end

      _ ->
        %{id: Keyword.get(opts, :name, __MODULE__), start: {__MODULE__, :start_link, [opts]}}
    end
  end

  @doc """
  Runs `command` with `args` on a worker. Options (as `Snakepit.execute/3`):

  #{Snakepit.Pool.CallOptions.doc()}

  The call runs in the caller's process (`Snakepit.Pool.Call`).
  """
  @spec execute(String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  defdelegate execute(command, args, opts \\ []), to: Call

  @doc """
  Runs `command` once per item of `items` (argument maps), in messages of
  many items each, spread over the pool's workers; see
  `Snakepit.execute_many/3`. `opts` are checked call options.
  """
  @spec execute_many(String.t(), list(), keyword(), pos_integer() | nil) ::
          [{:ok, term()} | {:error, Error.t()}] | {:error, Error.t()}
  defdelegate execute_many(command, items, opts, chunk_size \\ nil), to: Call

  @doc """
  Runs a streaming `command`, calling `callback` with each chunk. Options as
  `execute/3`; the default budget is `Snakepit.Defaults.pool_streaming_timeout/0`
  and the queue budget `Snakepit.Defaults.checkout_timeout/0`. Streams are
  never retried.
  """
  @spec execute_stream(String.t(), map(), (map() -> term()), keyword()) ::
          :ok | {:error, Error.t()}
  defdelegate execute_stream(command, args, callback, opts \\ []), to: Call

  @doc """
  The total budget of a call of `call_type` (`:execute`, `:execute_stream`
  or `:queue`): `opts[:timeout]` when given, else the configured default.

      iex> Snakepit.Pool.get_default_timeout_for_call(:execute, %{}, timeout: 45_000)
      45_000
  """
  @spec get_default_timeout_for_call(atom(), map(), keyword()) :: timeout()
  def get_default_timeout_for_call(call_type, _args, opts), do: Deadline.total(call_type, opts)

  @doc """
  The budget (ms) of the call to Python: `Snakepit.Defaults.rpc_timeout/1`
  of what remains until `opts[:deadline_ms]` when given, else of
  `opts[:timeout]`, else of `default_timeout`.

      iex> Snakepit.Pool.derive_rpc_timeout_from_opts([], 60_000)
      58_800
  """
  @spec derive_rpc_timeout_from_opts(keyword(), timeout()) :: timeout()
  def derive_rpc_timeout_from_opts(opts, default_timeout) do
    case Deadline.of(opts, :infinity) do
      :infinity -> Defaults.rpc_timeout(Keyword.get(opts, :timeout, default_timeout))
      deadline -> Defaults.rpc_timeout(Deadline.remaining(deadline))
    end
  end

  @doc """
  How long (ms) a request may wait in the queue: `configured_queue_timeout`,
  capped by what remains until `opts[:deadline_ms]` when given.

      iex> Snakepit.Pool.effective_queue_timeout_ms([], 10_000)
      10_000
  """
  @spec effective_queue_timeout_ms(keyword(), timeout()) :: timeout()
  def effective_queue_timeout_ms(opts, configured),
    do: Deadline.queue_timeout(Deadline.of(opts, :infinity), configured)

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
    with {:ok, server, which} <- server_and_pool(pool),
         {:ok, timeout} <- await_timeout(timeout) do
      try do
        GenServer.call(server, {:await, kind, which}, timeout)
      catch
        :exit, {:timeout, _} ->
          {:error, Error.timeout_error("pool not ready within #{timeout} ms", %{pool: pool})}

        :exit, {:noproc, _} ->
          {:error,
           Error.pool_error("Snakepit pool #{inspect(pool)} is not running", %{pool: pool})}

        :exit, reason ->
          {:error,
           Error.pool_error("pool stopped while starting: #{inspect(reason)}", %{pool: pool})}
      end
    end
  end

  defp await_timeout(nil), do: {:ok, Defaults.pool_await_ready_timeout()}
  defp await_timeout(:infinity), do: {:ok, :infinity}

  defp await_timeout(ms) when is_integer(ms) and ms >= 0 and ms <= 2_147_483_647,
    do: {:ok, ms}

  defp await_timeout(other),
    do:
      invalid(:timeout, other, "a non-negative integer of ms up to 2147483647, :infinity or nil")

  # A registered process (or pid) means "all its pools"; any other atom
  # names one pool of the default pool process.
  defp server_and_pool(pool) when is_pid(pool), do: {:ok, pool, :all}

  defp server_and_pool(pool) when is_atom(pool) and not is_nil(pool) do
    cond do
      pool == __MODULE__ or Process.whereis(pool) != nil -> {:ok, pool, :all}
      server = Snakepit.Pool.Names.whereis(pool) -> {:ok, server, pool}
      true -> {:ok, __MODULE__, pool}
    end
  end

  defp server_and_pool({server, name}) when (is_atom(server) or is_pid(server)) and is_atom(name),
    do: {:ok, server, name}

  defp server_and_pool(other),
    do: invalid(:pool, other, "a pool process (name or pid), a pool's name, or {process, name}")

  defp invalid(what, value, expected) do
    {:error,
     Error.validation_error(
       "invalid #{what}: #{inspect(value, limit: 10, printable_limit: 80)}; expected #{expected}",
       %{option: what, value: value, expected: expected}
     )}
  end

  # A query of a pool process that is not running (or not a pool) is an
  # error value, not an exit in the caller.
  defp query(server, request, pool) do
    GenServer.call(server, request)
  catch
    :exit, {:noproc, _} ->
      {:error, Error.pool_error("Snakepit pool #{inspect(pool)} is not running", %{pool: pool})}

    :exit, reason ->
      {:error,
       Error.pool_error("Snakepit pool #{inspect(pool)} did not answer: #{inspect(reason)}", %{
         pool: pool
       })}
  end

  @doc """
  Statistics summed over every pool of `pool` (a pool process), or of one
  pool when `pool` is a pool's name: `requests`, `errors`, `queued`,
  `queue_timeouts`, `pool_saturated`, `size` (the workers the pool keeps
  now), `min_workers` and `max_workers` (its range; both `pool_size` for a
  fixed pool), `workers` (ready ones), `available`, `busy`,
  `utilization` (busy share of capacity, now), and `wait_time_ms` /
  `run_time_ms` (`%{p50:, p90:, p99:}` over the last 30-60 s, within
  12.5%; `nil` without calls) of the time calls waited for a worker and
  held it (`Snakepit.Pool.Timings`).
  """
  @spec get_stats(atom() | pid()) :: map() | {:error, Error.t()}
  def get_stats(pool \\ __MODULE__) do
    with {:ok, server, which} <- server_and_pool(pool),
         do: query(server, {:stats, which}, pool)
  end

  @doc "Statistics of the pool named `pool_name` of the pool process `pool`."
  @spec get_stats(atom() | pid(), atom()) :: map() | {:error, Error.t()}
  def get_stats(pool, pool_name) do
    with {:ok, server, name} <- server_and_pool({pool, pool_name}),
         do: query(server, {:stats, name}, pool)
  end

  @doc """
  Ids of the ready workers of every pool of `pool` (a pool process), or of
  one pool when `pool` is a pool's name.
  """
  @spec list_workers(atom() | pid()) :: [String.t()] | {:error, Error.t()}
  def list_workers(pool \\ __MODULE__) do
    with {:ok, server, which} <- server_and_pool(pool),
         do: query(server, {:list_workers, which}, pool)
  end

  @doc "Ids of the ready workers of the pool named `pool_name`."
  @spec list_workers(atom() | pid(), atom()) :: [String.t()] | {:error, Error.t()}
  def list_workers(pool, pool_name) do
    with {:ok, server, name} <- server_and_pool({pool, pool_name}),
         do: query(server, {:list_workers, name}, pool)
  end

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

  @doc """
  Sets the size of pool `pool_name` at run time: `:ok` once the pool has
  taken the new size, while the workers it needs start, or those it no
  longer needs drain, in the background (`[:snakepit, :pool, :scale]` with
  `reason: :resize`, then a `[:snakepit, :worker, :initialized]` per
  worker ready and a `[:snakepit, :pool, :worker, :retired]` per worker
  stopped).

  A fixed pool keeps the new size. An elastic pool (`min_workers <
  max_workers`) takes any size within its range and goes on breathing
  from there: it shrinks back after `scale_down_after_ms` if the calls do
  not need the workers. A worker that leaves stops taking new calls, ends
  those in flight, and stops once no session with strict affinity is
  pinned to it (see the guide's "Pools that breathe"); workers without
  calls or strict sessions leave first.

  `pool_name` is a pool's name or `{pool process, name}`; a pool process
  alone means its default pool. `{:error, %Snakepit.Error{category:
  :validation}}` for a size that is not a positive integer up to
  `pool_max_workers`, or outside an elastic pool's range.
  """
  @spec resize(atom() | pid() | {atom() | pid(), atom()}, pos_integer()) ::
          :ok | {:error, Error.t()}
  def resize(pool_name, n) do
    max = Defaults.pool_max_workers()

    with {:ok, server, which} <- server_and_pool(pool_name) do
      if is_integer(n) and n > 0 and n <= max,
        do: query(server, {:resize, which, n}, pool_name),
        else: invalid(:size, n, "a positive integer up to pool_max_workers (#{max})")
    end
  end

  @doc """
  Replaces every worker of pool `pool_name` while it serves, e.g. after a
  deploy of new adapter code or weights. Returns `:ok` when every worker
  was replaced. Options:

    * `:rolling` - `true` (default): one worker at a time; its
      replacement starts (in the same slot: same `worker_env`, same
      device) and is ready before the old one stops taking calls, drains
      and stops, so the pool never has fewer ready workers than its size.
      `false`: every replacement starts at once (twice the processes for
      a moment).
    * `:timeout` - how long to wait (ms, default 300_000, or `:infinity`);
      on timeout `{:error, %Snakepit.Error{category: :timeout}}` while the
      restart goes on.

  Sessions pinned to a replaced worker follow the affinity rules for a
  worker that is gone (`:hint` moves on, strict modes get
  `:session_worker_unavailable` once). If a replacement fails to start,
  the restart stops there and returns the error: the worker it was to
  replace keeps serving. A restart asked for while one runs runs after
  it. Telemetry: `[:snakepit, :pool, :restart, :start | :step | :stop]`
  (`Snakepit.Pool.Restart`).
  """
  @spec restart(atom() | pid() | {atom() | pid(), atom()}, keyword()) :: :ok | {:error, Error.t()}
  def restart(pool_name, opts \\ []) do
    with {:ok, server, which} <- server_and_pool(pool_name),
         {:ok, rolling, timeout} <- restart_opts(opts) do
      try do
        GenServer.call(server, {:restart, which, [rolling: rolling]}, timeout)
      catch
        :exit, {:timeout, _} ->
          {:error,
           Error.timeout_error(
             "restart of #{inspect(pool_name)} not done within #{timeout} ms",
             %{
               pool: pool_name
             }
           )}

        :exit, {:noproc, _} ->
          {:error,
           Error.pool_error("Snakepit pool #{inspect(pool_name)} is not running", %{
             pool: pool_name
           })}

        :exit, reason ->
          {:error,
           Error.pool_error("pool stopped during the restart: #{inspect(reason)}", %{
             pool: pool_name
           })}
      end
    end
  end

  defp restart_opts(opts) do
    if Keyword.keyword?(opts) do
      rolling = Keyword.get(opts, :rolling, true)
      timeout = Keyword.get(opts, :timeout, 300_000)

      cond do
        unknown = Enum.find(Keyword.keys(opts), &(&1 not in [:rolling, :timeout])) ->
          invalid(:option, unknown, "one of :rolling, :timeout")

        not is_boolean(rolling) ->
          invalid(:rolling, rolling, "a boolean")

        not (timeout == :infinity or (is_integer(timeout) and timeout > 0)) ->
          invalid(:timeout, timeout, "a positive integer of ms or :infinity")

        true ->
          {:ok, rolling, timeout}
      end
    else
      invalid(:options, opts, "a keyword list")
    end
  end

  @doc "Requests worker `worker_id` of `pool_name` runs now."
  @spec worker_load(atom(), String.t()) :: non_neg_integer()
  def worker_load(pool_name, worker_id),
    do: GenServer.call(__MODULE__, {:worker_load, pool_name, worker_id})

  @doc false
  # Workers of every pool as {pool, id, pid, os_pid, config} (for the lifecycle manager).
  def worker_details(server \\ __MODULE__), do: GenServer.call(server, :worker_details)

  @doc false
  # Every pool with its stats and workers, for Snakepit.Status.
  def status(server \\ __MODULE__), do: GenServer.call(server, :status)
end
