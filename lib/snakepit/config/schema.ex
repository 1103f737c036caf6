defmodule Snakepit.Config.Schema do
  @moduledoc """
  The one table of per-pool configuration keys: each key's check, the
  words an error uses for what it expects, its default, whether a legacy
  single-pool configuration may give it at the top level of `config
  :snakepit`, and its documentation. Validation, normalization, the
  `t:Snakepit.Config.pool_config/0` type and the "Per-pool keys" list of
  `Snakepit.Config` all come from it.

  A default is a value, or `{Snakepit.Defaults, fun}` read when a pool is
  normalized (so runtime configuration counts), or `:none` for keys with
  no default (absent means off).
  """

  alias Snakepit.Defaults

  @profiles [:process, :thread]
  @affinities [:hint, :strict_queue, :strict_fail_fast]
  @capacity_strategies [:pool, :profile, :hybrid]
  @call_transports [:lane, :grpc]
  @ttl_units [:seconds, :minutes, :hours]
  # The heartbeat keys (the Python worker's `HeartbeatConfig` takes the
  # same), each with its default: a value or the `Snakepit.Defaults` getter.
  @heartbeat [
    enabled: true,
    ping_interval_ms: {Defaults, :heartbeat_ping_interval_ms},
    timeout_ms: {Defaults, :heartbeat_timeout_ms},
    max_missed_heartbeats: {Defaults, :heartbeat_max_missed},
    initial_delay_ms: {Defaults, :heartbeat_initial_delay_ms},
    dependent: true
  ]
  @heartbeat_keys Keyword.keys(@heartbeat)

  # {key, type, check (a name of a check below), expected, default, legacy?, doc}
  @keys [
    {:name, quote(do: atom()), :atom, "an atom", :default, false,
     "pool identifier (atom; required in `pools:`; the first pool is the default one)"},
    {:worker_profile, quote(do: :process | :thread | module()), :profile,
     "one of #{inspect(@profiles)} (or a module implementing Snakepit.WorkerProfile)",
     {Defaults, :default_worker_profile}, true,
     "`:process` (one single-threaded Python process per worker, capacity 1) or `:thread` " <>
       "(capacity `threads_per_worker`)"},
    {:pool_size, quote(do: pos_integer()), :pos_int, "a positive integer",
     {Defaults, :default_pool_size}, true,
     "number of workers (default two per scheduler, at most `pool_max_workers`)"},
    {:min_workers, quote(do: pos_integer()), :pos_int, "a positive integer", :none, true,
     "elastic pools: the fewest workers; the pool starts with this many and shrinks back to " <>
       "it when idle (given with or without `max_workers`, it makes the pool elastic; " <>
       "default 1 when only `max_workers` is given; see the guide's \"Pools that breathe\")"},
    {:max_workers, quote(do: pos_integer()), :pos_int, "a positive integer", :none, true,
     "elastic pools: the most workers the pool grows to while calls wait (default " <>
       "`pool_size` when only `min_workers` is given)"},
    {:scale_down_after_ms, quote(do: pos_integer()), :pos_int, "a positive integer (ms)", 60_000,
     true,
     "elastic pools: workers the pool did not need for this long are drained and stopped, " <>
       "down to `min_workers`"},
    {:worker_env, quote(do: {module(), atom(), list()} | nil), :mfa,
     "nil or {module, function, args}", nil, true,
     "per-worker environment: `{m, f, a}` called as `apply(m, f, [slot_index | a])` in the " <>
       "worker's own process before it starts Python, returning a map (or list of pairs) of " <>
       "string names and values; the slot index (0-based) stays with the slot across " <>
       "restarts and replacements"},
    {:devices, quote(do: :per_worker | nil), :devices, "nil or :per_worker", nil, true,
     "`:per_worker` gives each worker one GPU found by `Snakepit.Hardware` " <>
       "(`CUDA_VISIBLE_DEVICES` or `HIP_VISIBLE_DEVICES`, by slot index, round-robin); " <>
       "without a GPU nothing is set and a warning says so once"},
    {:reload, quote(do: boolean() | keyword()), :reload,
     "a boolean or a keyword list with keys among [:interval_ms, :paths]", false, true,
     "development: watch the pool's Python files (`.py` under every app's `priv/python`, " <>
       "`python_path` and `paths:`), polling every `interval_ms` (1000), and restart the " <>
       "pool rolling after a change"},
    {:adapter_module, quote(do: module()), :module, "a module", Snakepit.Adapters.GRPCPython,
     true,
     "the `Snakepit.Adapter` that decides how a worker's process starts (interpreter, entry " <>
       "script or module, arguments)"},
    {:adapter_args, quote(do: [String.t()]), :string_list, "a list of strings", :adapter_args,
     true,
     "arguments for the worker, e.g. `[\"--adapter\", \"my_module.MyAdapter\"]` (default: " <>
       "`[\"--adapter\", spec]` when the upstream key `python_adapter: spec` is set, else none)"},
    {:adapter_env, quote(do: [{String.t(), String.t()}]), :env,
     "a list of {name, value} string pairs (or a map)", [], true,
     "extra environment variables for the workers (kept out of logs and reports)"},
    {:capacity_strategy, quote(do: :pool | :profile | :hybrid), :capacity_strategy,
     "one of #{inspect(@capacity_strategies)}", {Defaults, :default_capacity_strategy}, true,
     "accepted for compatibility; has no effect (a worker's capacity comes from its " <>
       "profile) and a warning says so once"},
    {:affinity, quote(do: :hint | :strict_queue | :strict_fail_fast), :affinity,
     "one of #{inspect(@affinities)}", {Defaults, :default_affinity_mode}, true,
     "session affinity: `:hint`, `:strict_queue` or `:strict_fail_fast`"},
    {:pool_identifier, quote(do: atom() | nil), :atom, "an atom or nil", nil, true,
     "an atom reported in the worker registry's metadata"},
    {:max_queue_size, quote(do: non_neg_integer()), :non_neg_int, "a non-negative integer",
     {Defaults, :pool_max_queue_size}, false, "most requests that may wait for a worker"},
    {:queue_timeout, quote(do: timeout()), :timeout, "a positive integer (ms) or :infinity",
     {Defaults, :pool_queue_timeout}, false, "longest wait in the queue (ms)"},
    {:queue, quote(do: keyword()), :queue,
     "a keyword list or map with discipline: one of #{inspect(Snakepit.Pool.Admission.disciplines())}",
     [discipline: :deadline], false,
     "the queue discipline: `[discipline: :deadline]` (the default: calls that can no longer " <>
       "finish within their deadline are refused as `:overloaded` instead of queued or run, " <>
       "see `Snakepit.Pool.Admission`) or `[discipline: :fifo]` (wait up to the queue timeout, " <>
       "run whatever budget is left)"},
    {:startup_timeout, quote(do: pos_integer()), :pos_int, "a positive integer (ms)",
     {Defaults, :grpc_server_ready_timeout}, false,
     "time a worker may take to report ready (ms)"},
    {:worker_ttl, quote(do: :infinity | {pos_integer(), :seconds | :minutes | :hours}), :ttl,
     ":infinity or {n, :seconds | :minutes | :hours} with n > 0", :infinity, true,
     "recycle a worker after this long"},
    {:worker_max_requests, quote(do: :infinity | pos_integer()), :max_requests,
     ":infinity or a positive integer", :infinity, true,
     "recycle a worker after this many requests"},
    {:memory_threshold_mb, quote(do: pos_integer() | nil), :optional_pos_int,
     "nil or a positive integer (MB)", nil, true,
     "recycle a worker whose Python process uses more resident memory (`nil`: off)"},
    {:worker_memory_limit_mb, quote(do: pos_integer() | nil), :optional_pos_int,
     "nil or a positive integer (MB)", nil, true,
     "hard cap on a worker's heap and anonymous memory (`RLIMIT_DATA`; `nil`: none): an " <>
       "allocation past it raises `MemoryError` in the tool (`Snakepit.Error.OutOfMemory`)"},
    {:heartbeat, quote(do: map()), :heartbeat,
     "a map or keyword list with keys among #{inspect(@heartbeat_keys)}", :heartbeat, true,
     "heartbeat options (see `Snakepit.Config.heartbeat_defaults/0`)"},
    {:crash_barrier, quote(do: map()), :map_or_keyword, "a map or keyword list", %{}, false,
     "crash barrier options for this pool (see `Snakepit.CrashBarrier`)"},
    {:cwd, quote(do: String.t() | nil), :optional_string, "a directory path", nil, false,
     "working directory of the workers"},
    {:startup_batch_size, quote(do: pos_integer()), :pos_int, "a positive integer", :batch_size,
     true,
     "process profile: workers started at once (8; the legacy global " <>
       "`pool_startup_batch_size` when set)"},
    {:startup_batch_delay_ms, quote(do: non_neg_integer()), :non_neg_int,
     "a non-negative integer (ms)", :batch_delay, true,
     "process profile: longest wait (ms) before the next batch (750; the legacy global " <>
       "`pool_startup_batch_delay_ms` when set)"},
    {:call_transport, quote(do: :lane | :grpc), :call_transport,
     "one of #{inspect(@call_transports)}", {Defaults, :call_transport}, true,
     "how `execute` and `execute_stream` reach a worker: `:lane` (a lean Unix socket beside " <>
       "gRPC, the default) or `:grpc` (the `ExecuteTool` RPCs); sessions, heartbeats and " <>
       "cancellation use gRPC either way (see the guide's \"Call transport\")"},
    {:threads_per_worker, quote(do: pos_integer()), :pos_int, "a positive integer",
     {Defaults, :config_default_threads_per_worker}, true,
     "thread profile: calls one worker runs at once (10)"},
    {:thread_safety_checks, quote(do: boolean()), :boolean, "a boolean", false, true,
     "thread profile: the worker warns (once per tool) when a tool not marked " <>
       "`@thread_safe_method` runs in two threads at once"}
  ]

  @doc "Every per-pool key."
  @spec keys() :: [atom()]
  def keys, do: for({key, _, _, _, _, _, _} <- @keys, do: key)

  @doc "Keys a legacy (single-pool, top-level) configuration may give."
  @spec legacy_keys() :: [atom()]
  def legacy_keys, do: for({key, _, _, _, _, true, _} <- @keys, do: key)

  @doc "The heartbeat option keys."
  @spec heartbeat_keys() :: [atom()]
  def heartbeat_keys, do: @heartbeat_keys

  @doc "Every heartbeat key's built-in default (read now, so runtime configuration counts)."
  @spec heartbeat_defaults() :: map()
  def heartbeat_defaults,
    do: Map.new(@heartbeat, fn {key, default} -> {key, resolve(default)} end)

  @doc "The built-in worker profiles."
  @spec profiles() :: [atom()]
  def profiles, do: @profiles

  @doc "The documentation of every key, as a Markdown list."
  @spec doc() :: String.t()
  def doc do
    Enum.map_join(@keys, "\n", fn {key, _, _, _, _, _, doc} -> "  * `#{key}` - #{doc}" end)
  end

  @doc false
  # The map type of a normalized pool config, as quoted code built from the
  # table (for `@type` in `Snakepit.Config`).
  def pool_config_type do
    fields =
      for {key, type, _, _, default, _, _} <- @keys do
        kind = if default == :none, do: :optional, else: :required
        {{kind, [], [key]}, type}
      end

    {:%{}, [], fields ++ [{{:optional, [], [quote(do: atom())]}, quote(do: term())}]}
  end

  @doc """
  Checks the keys present in `config` (unknown keys included): `:ok` or
  `{:error, message}` naming the key and the value.
  """
  @spec check(map()) :: :ok | {:error, String.t()}
  def check(config) do
    known = keys()

    case Enum.reject(Map.keys(config), &(&1 in known)) do
      [key | _] ->
        {:error,
         "unknown key #{inspect(key)} (value #{inspect(config[key])}); known keys: " <>
           Enum.map_join(Enum.sort(known), ", ", &inspect/1)}

      [] ->
        Enum.find_value(@keys, :ok, fn {key, _, check, expected, _, _, _} ->
          case Map.fetch(config, key) do
            {:ok, value} ->
              if not valid?(check, value),
                do: {:error, "#{key} must be #{expected}, got: #{inspect(value)}"}

            :error ->
              nil
          end
        end)
    end
  end

  @doc "Every key's default for a pool (read now, so runtime configuration counts)."
  @spec defaults() :: map()
  def defaults do
    for {key, _, _, _, default, _, _} <- @keys, default != :none, into: %{} do
      {key, resolve(default)}
    end
  end

  defp resolve({Defaults, fun}), do: apply(Defaults, fun, [])
  defp resolve(:heartbeat), do: %{}

  # The legacy global `pool_startup_batch_*` keys, when an operator set them.
  defp resolve(:batch_size), do: Defaults.pool_startup_batch_size()
  defp resolve(:batch_delay), do: Defaults.pool_startup_batch_delay_ms()

  # Upstream's `python_adapter: "module:Class"` (or `"module.Class"`) names
  # the adapter of pools that give no adapter_args.
  defp resolve(:adapter_args) do
    case Snakepit.Defaults.python_adapter() do
      spec when is_binary(spec) and spec != "" -> ["--adapter", spec]
      _ -> []
    end
  end

  defp resolve(value), do: value

  defp valid?(:atom, v), do: is_atom(v)
  defp valid?(:module, v), do: is_atom(v) and v != nil
  defp valid?(:pos_int, v), do: pos_int?(v)
  defp valid?(:non_neg_int, v), do: is_integer(v) and v >= 0
  defp valid?(:optional_pos_int, v), do: is_nil(v) or pos_int?(v)
  defp valid?(:timeout, v), do: v == :infinity or pos_int?(v)
  defp valid?(:boolean, v), do: is_boolean(v)
  defp valid?(:optional_string, v), do: is_nil(v) or is_binary(v)
  defp valid?(:string_list, v), do: is_list(v) and Enum.all?(v, &is_binary/1)
  defp valid?(:map_or_keyword, v), do: is_map(v) or Keyword.keyword?(v)
  defp valid?(:profile, v), do: v in @profiles or (is_atom(v) and v != nil and custom_profile?(v))
  defp valid?(:affinity, v), do: v in @affinities
  defp valid?(:capacity_strategy, v), do: v in @capacity_strategies
  defp valid?(:call_transport, v), do: v in @call_transports
  defp valid?(:max_requests, v), do: v == :infinity or pos_int?(v)
  defp valid?(:env, v) when is_map(v), do: valid?(:env, Map.to_list(v))

  defp valid?(:env, v),
    do: is_list(v) and Enum.all?(v, &match?({k, val} when is_binary(k) and is_binary(val), &1))

  defp valid?(:ttl, :infinity), do: true
  defp valid?(:ttl, {n, unit}), do: pos_int?(n) and unit in @ttl_units
  defp valid?(:ttl, _), do: false

  defp valid?(:heartbeat, hb) when is_list(hb),
    do: Keyword.keyword?(hb) and valid?(:heartbeat, Map.new(hb))

  defp valid?(:heartbeat, hb) when is_map(hb) do
    Enum.all?(hb, fn
      {k, v} when k in [:enabled, :dependent] -> is_boolean(v)
      {:initial_delay_ms, v} -> is_integer(v) and v >= 0
      {k, v} when k in @heartbeat_keys -> pos_int?(v)
      _ -> false
    end)
  end

  defp valid?(:heartbeat, _), do: false

  defp valid?(:queue, q) when is_list(q), do: Keyword.keyword?(q) and valid?(:queue, Map.new(q))

  defp valid?(:queue, q) when is_map(q) do
    Enum.all?(q, fn
      {:discipline, d} -> d in Snakepit.Pool.Admission.disciplines()
      _ -> false
    end)
  end

  defp valid?(:queue, _), do: false

  defp valid?(:mfa, nil), do: true

  defp valid?(:mfa, {m, f, a}),
    do: is_atom(m) and m != nil and is_atom(f) and f != nil and is_list(a)

  defp valid?(:mfa, _), do: false
  defp valid?(:devices, v), do: v in [nil, :per_worker]
  defp valid?(:reload, v) when is_boolean(v), do: true

  defp valid?(:reload, v) when is_list(v) do
    Keyword.keyword?(v) and
      Enum.all?(v, fn
        {:interval_ms, ms} -> pos_int?(ms)
        {:paths, paths} -> is_list(paths) and Enum.all?(paths, &is_binary/1)
        _ -> false
      end)
  end

  defp valid?(:reload, _), do: false

  defp pos_int?(v), do: is_integer(v) and v > 0

  defp custom_profile?(module) do
    Code.ensure_loaded?(module) and function_exported?(module, :start_worker, 1)
  end
end
