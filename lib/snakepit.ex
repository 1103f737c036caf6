defmodule Snakepit do
  @moduledoc """
  Run Python code from Elixir in a pool of worker processes.

      {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{})
      {:ok, %{"result" => 5}} = Snakepit.execute("add", %{a: 2, b: 3})

  Calls go from the caller's process through the Rust native core to a
  Python worker over gRPC; the pool only hands out workers. Configure pools
  with `config :snakepit, ...` (see `Snakepit.Config`). A Python exception
  comes back as a pattern-matchable struct (`{:error,
  %Snakepit.Error.ValueError{}}`, ..., `%Snakepit.Error.PythonException{}`;
  see `Snakepit.Error.PythonTranslation`); every other failure is
  `{:error, %Snakepit.Error{}}` with a `category` to match on.

  Python tools can call Elixir functions registered with
  `Snakepit.Bridge.ToolRegistry` (see `docs/tool_bridge.md`).
  """

  alias Snakepit.Pool
  alias Snakepit.Pool.CallOptions

  @type command :: String.t()
  @type args :: map()
  @type session_id :: String.t()
  @type pool_name :: atom() | pid()
  @type result :: term()
  @type callback_fn :: (term() -> any())
  @type error :: Snakepit.Error.t() | Exception.t()

  @doc """
  Runs `command` with `args` on a free worker and returns its result.

  Options:

  #{Snakepit.Pool.CallOptions.doc()}

  An option Snakepit does not know is named in a warning (once) and has no
  effect.

  Every option is checked in the calling process before anything else
  sees it: a bad value is `{:error, %Snakepit.Error{category: :validation}}`
  whose `details` name the `:option`, the `:value` given and what is
  `:expected` (`Snakepit.Pool.CallOptions.normalize/1` lists them all), and
  nothing is sent, queued or recorded. One caller's mistake never reaches
  the pool, the session store or another caller's call.

  Besides the tool's own errors, a call may fail with reason `:pool_saturated`
  (queue full), `:queue_timeout`, `:worker_busy` / `:session_worker_unavailable`
  (strict affinity) or `:worker_crash` in the error's `details`. See
  `Snakepit.Pool` and `docs/pools.md`.

  A tool returning Python `bytes` gives an Elixir binary. A streaming tool
  called here is a `:validation` error naming `execute_stream/4`.
  """
  @spec execute(command(), args(), keyword()) :: {:ok, result()} | {:error, error()}
  def execute(command, args \\ %{}, opts \\ []) do
    with {:ok, opts} <- CallOptions.normalize(opts) do
      case Snakepit.Cluster.target(opts) do
        :local -> Snakepit.Pool.Call.execute_checked(command, args, opts)
        {:error, _} = error -> error
        routed -> Snakepit.Cluster.execute(routed, command, args, opts)
      end
    end
  end

  @doc """
  Runs `command` once for each argument map in `items` and returns, in the
  same order, each item's `{:ok, result}` or `{:error, error}`: one item's
  failure is that item's alone.

      [{:ok, 3}, {:ok, 7}] = Snakepit.execute_many("add", [%{a: 1, b: 2}, %{a: 3, b: 4}])

  The items leave in chunks, one message per chunk, spread over the
  pool's free workers: a batched tool (`@tool(batch=True)`) gets each
  chunk as lists of at most its `max_batch_size`; any other tool runs the
  items of a chunk one after the other inside its worker. That saves the
  per-call round trip, which for small calls is most of their cost.

  Options are those of `execute/3` (one `:timeout` for the whole list;
  `:idempotent` lets the crash barrier retry the items of a crashed
  worker's chunk elsewhere, as does `idempotent: true` in an item), plus:

    * `:chunk_size` - items per message (a positive integer; default: the
      items spread evenly over the pool's slots, at most
      `Snakepit.Pool.Batching.max_chunk/0` per message). A chunk must fit
      `max_message_bytes`.

  `:binary_parameters`, `:session_id` and `:affinity` do not apply (the
  items of a list are not pinned to a session), nor `node:` to another
  node. `items` that is not a list, or a bad option, is `{:error,
  %Snakepit.Error{category: :validation}}` and nothing runs; an item that
  is not a map gets its own `:validation` error and the others run.
  """
  @spec execute_many(command(), [args()], keyword()) ::
          [{:ok, result()} | {:error, error()}] | {:error, error()}
  def execute_many(command, items, opts \\ []) do
    with {:ok, chunk_size, opts} <- chunk_size(opts),
         :ok <- many_items(items),
         {:ok, opts} <- CallOptions.normalize(opts),
         :ok <- many_options(opts) do
      case Snakepit.Cluster.target(opts) do
        :local -> Pool.execute_many(command, items, opts, chunk_size)
        {:local, pool} -> Pool.execute_many(command, items, [{:pool, pool} | opts], chunk_size)
        {:error, _} = error -> error
        {:remote, node, _pool} -> many_refused(:node, node, "this node's pools (:local)")
      end
    end
  end

  defp chunk_size(opts) when is_list(opts) do
    case List.keyfind(opts, :chunk_size, 0) do
      nil ->
        {:ok, nil, opts}

      {:chunk_size, n} when is_integer(n) and n > 0 ->
        {:ok, n, List.keydelete(opts, :chunk_size, 0)}

      {:chunk_size, other} ->
        many_refused(:chunk_size, other, "a positive integer")
    end
  end

  # Not a list: CallOptions.normalize/1 refuses it.
  defp chunk_size(opts), do: {:ok, nil, opts}

  defp many_items(items) when is_list(items) do
    if proper_list?(items), do: :ok, else: many_refused(:items, items, "a list of argument maps")
  end

  defp many_items(items), do: many_refused(:items, items, "a list of argument maps")

  defp proper_list?([]), do: true
  defp proper_list?([_ | rest]), do: proper_list?(rest)
  defp proper_list?(_), do: false

  defp many_options(opts) do
    case Enum.find(opts, fn {key, value} ->
           key in [:binary_parameters, :session_id, :affinity] and value != nil
         end) do
      nil -> :ok
      {key, value} -> many_refused(key, value, "no #{key} (execute_many takes none)")
    end
  end

  defp many_refused(option, value, expected) do
    {:error,
     Snakepit.Error.validation_error(
       "execute_many: invalid #{option}: #{inspect(value, limit: 10)}; expected #{expected}",
       %{option: option, value: value, expected: expected}
     )}
  end

  @doc """
  Like `execute/3`, in the session `session_id`: the call goes to the
  session's last worker when it is free, and the Python tool sees the
  session id in its context.
  """
  @spec execute_in_session(session_id(), command(), args(), keyword()) ::
          {:ok, result()} | {:error, error()}
  def execute_in_session(session_id, command, args \\ %{}, opts \\ []) do
    with :ok <- session_given(session_id),
         do: execute(command, args, with_session(opts, session_id))
  end

  @doc """
  Runs a streaming `command`, calling `callback_fn` with each chunk, in
  order, in the calling process. Returns `:ok` when the stream ends.
  Default timeout: `Snakepit.Defaults.stream_timeout/0`.

  Each chunk is a map with `"is_final"`: a JSON object chunk is that map;
  other JSON is under `"data"`; bytes that are not JSON are under
  `"raw_data_base64"`. The last chunk has `"is_final" => true`.

  Returning `:halt` from the callback cancels the call, which stops the
  Python producer. At most `stream_window` chunks (config, default 32) are
  in flight, so the caller's mailbox stays bounded however fast Python
  produces. A tool that is not a streaming tool gives its result as one
  final chunk; an exception, as `{:error, ...}` like `execute/3`.
  """
  @spec execute_stream(command(), args(), callback_fn(), keyword()) ::
          :ok | {:error, error()}
  def execute_stream(command, args \\ %{}, callback_fn, opts \\ []) do
    with {:ok, opts} <- CallOptions.normalize(opts) do
      case Snakepit.Cluster.target(opts) do
        :local ->
          Pool.execute_stream(command, args, callback_fn, opts)

        {:error, _} = error ->
          error

        routed ->
          Snakepit.Cluster.execute_stream(routed, command, args, callback_fn, opts)
      end
    end
  end

  @doc "`execute_stream/4` in the session `session_id`."
  @spec execute_in_session_stream(session_id(), command(), args(), callback_fn(), keyword()) ::
          :ok | {:error, error()}
  def execute_in_session_stream(session_id, command, args \\ %{}, callback_fn, opts \\ []) do
    with :ok <- session_given(session_id),
         do: execute_stream(command, args, callback_fn, with_session(opts, session_id))
  end

  @doc """
  Stops every worker process of this run now: SIGTERM, then SIGKILL for
  what is left after the grace period. Returns `{:timeout, pids}` when some
  survive even that.
  """
  @spec cleanup() :: :ok | {:timeout, list()}
  def cleanup, do: Snakepit.RuntimeCleanup.cleanup_current_run()

  @doc """
  Starts Snakepit, runs `fun`, then cleans up and stops it, so that a
  script or Mix task never leaves a Python process behind. Returns what
  `fun` returns, or `{:error, reason}` when the pool does not start.

  Options:
    * `:timeout` - how long to wait for the pool (default 15000 ms)
    * `:shutdown_timeout` - how long to wait for Snakepit to stop (default 15000 ms)
    * `:cleanup_timeout` - grace for worker processes before SIGKILL (default 5000 ms;
      0 skips the cleanup). Bounded: after `cleanup_timeout + 1000` ms the script goes on.
    * `:restart` - `:auto` (default: restart a running Snakepit when its config
      changed), `true` or `false`
    * `:await_pool` - wait for the pool (default: the `pooling_enabled` setting)
    * `:exit_mode` - `:none` (default: return; a raise is re-raised after cleanup),
      `:halt` (`System.halt/1`: 0 when `fun` returned, 1 when it raised),
      `:stop` (`System.stop/1`, same statuses) or `:auto` (`:halt` unless an
      IEx shell runs). Also `SNAKEPIT_SCRIPT_EXIT=none|halt|stop|auto`.
    * `:stop_mode` - `:if_started` (default: stop only if this call started it),
      `:always` or `:never`
    * `:halt` - legacy boolean for `exit_mode: :halt` (or `SNAKEPIT_SCRIPT_HALT=true`);
      ignored when `:exit_mode` is set

  A closed standard output never hangs the exit.
  """
  @spec run_as_script((-> any()), keyword()) :: any() | {:error, term()}
  def run_as_script(fun, opts \\ []), do: Snakepit.Application.Script.run(fun, opts)

  @doc """
  Request, error and worker counts summed over the pools (or of one pool);
  `:cluster` sums them over every node of the cluster (`Snakepit.Cluster.stats/0`).
  A `pool` that is not a pool's name or process is a `:validation` error; a
  pool that is not running, a `:pool` error.
  """

  @spec get_stats(pool_name() | :cluster) :: map() | {:error, Snakepit.Error.t()}
  def get_stats(pool \\ Snakepit.Pool)
  def get_stats(:cluster), do: Snakepit.Cluster.stats()
  def get_stats(pool), do: Pool.get_stats(pool)

  @doc """
  Ids of the ready workers. A `pool` that is not a pool's name or process
  is a `:validation` error; a pool that is not running, a `:pool` error.
  """
  @spec list_workers(pool_name()) :: [String.t()] | {:error, Snakepit.Error.t()}
  def list_workers(pool \\ Snakepit.Pool), do: Pool.list_workers(pool)

  # The session variants need a session (its value is checked with the
  # other options).
  defp session_given(nil) do
    {:error,
     Snakepit.Error.validation_error(
       "session_id is required: a non-empty UTF-8 string, got: nil",
       %{option: :session_id, value: nil, expected: "a non-empty UTF-8 string"}
     )}
  end

  defp session_given(_session_id), do: :ok

  # Options that are not a list are left for the call to refuse clearly.
  defp with_session(opts, session_id) when is_list(opts),
    do: Keyword.put(opts, :session_id, session_id)

  defp with_session(opts, _session_id), do: opts
end
