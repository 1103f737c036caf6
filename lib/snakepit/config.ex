defmodule Snakepit.Config do
  @moduledoc """
  Pool configuration: validation and normalization of `config :snakepit`.

  ## Legacy single-pool configuration

  Still works; it describes one pool called `:default`:

      config :snakepit,
        pooling_enabled: true,
        adapter_module: Snakepit.Adapters.GRPCPython,
        adapter_args: ["--adapter", "my_app.MyAdapter"],
        pool_size: 10

  The pool-level keys below may also be given at the top level (or in a
  `pool_config: %{...}` map) for this one pool.

  ## Multi-pool configuration

      config :snakepit,
        pools: [
          %{name: :default, worker_profile: :process, pool_size: 10},
          %{name: :compute, worker_profile: :thread, pool_size: 4, threads_per_worker: 8}
        ]

  Each call picks its pool with the `pool:` option; the first pool is the
  default one.

  ## Per-pool keys

    * `name` - pool identifier (atom; required in `pools:`)
    * `worker_profile` - `:process` (default) or `:thread`
    * `pool_size` - number of workers (default `Snakepit.Defaults.default_pool_size/0`,
      at most `Snakepit.Defaults.pool_max_workers/0`)
    * `adapter_module` - adapter (default `Snakepit.Adapters.GRPCPython`)
    * `adapter_args` - CLI arguments for the worker, e.g. `["--adapter", "m.Class"]`
    * `adapter_env` - extra environment variables, `[{"NAME", "value"}]`
    * `capacity_strategy` - `:pool` (default), `:profile` or `:hybrid`
    * `affinity` - `:hint` (default), `:strict_queue` or `:strict_fail_fast`
    * `pool_identifier` - optional atom used in metrics and diagnostics
    * `max_queue_size` - queue bound (default `pool_max_queue_size`)
    * `queue_timeout` - queue budget in ms (default `Snakepit.Defaults.pool_queue_timeout/0`)
    * `startup_timeout` - time a worker may take to report ready (ms)
    * `worker_ttl` - `:infinity` or `{n, :seconds | :minutes | :hours}`
    * `worker_max_requests` - `:infinity` or a positive integer
    * `memory_threshold_mb` - recycle a worker whose Python process uses more (`nil`: off)
    * `worker_memory_limit_mb` - hard cap on a worker's heap and anonymous memory
      (`RLIMIT_DATA`; `nil`: none): an allocation past it raises `MemoryError` in the
      tool (`Snakepit.Error.OutOfMemory` in Elixir) instead of waking the OOM killer
    * `heartbeat` - map or keyword of heartbeat options (see `heartbeat_defaults/0`)
    * `crash_barrier` - crash barrier options for this pool (see `Snakepit.CrashBarrier`)
    * process profile: `startup_batch_size` (default 8), `startup_batch_delay_ms` (default 750)
    * thread profile: `threads_per_worker` (default 10), `thread_safety_checks` (default false)

  ## gRPC listener

  The Elixir gRPC server that Python calls back into is configured with
  `:grpc_listener` (or the legacy `:grpc_port` / `:grpc_host`):

      config :snakepit, grpc_listener: [mode: :internal]
      config :snakepit, grpc_listener: [mode: :external, host: "localhost", port: 50_051]
      config :snakepit,
        grpc_listener: [mode: :external_pool, host: "localhost", base_port: 50_051, pool_size: 8]

  ## Instance isolation

  `:instance_name` (or `SNAKEPIT_INSTANCE_NAME`) names this instance;
  `:instance_token` (or `SNAKEPIT_INSTANCE_TOKEN`) isolates concurrent runs;
  runtime state is kept under `data_dir/0`.
  """

  alias Snakepit.Defaults

  @profiles [:process, :thread]
  @affinities [:hint, :strict_queue, :strict_fail_fast]
  @capacity_strategies [:pool, :profile, :hybrid]
  @ttl_units [:seconds, :minutes, :hours]
  @heartbeat_keys [
    :enabled,
    :ping_interval_ms,
    :timeout_ms,
    :max_missed_heartbeats,
    :initial_delay_ms,
    :dependent
  ]

  # Keys a legacy (top-level) configuration may give for its one pool.
  @legacy_keys [
    :adapter_module,
    :adapter_args,
    :adapter_env,
    :pool_size,
    :affinity,
    :worker_profile,
    :capacity_strategy,
    :threads_per_worker,
    :thread_safety_checks,
    :startup_batch_size,
    :startup_batch_delay_ms,
    :worker_ttl,
    :worker_max_requests,
    :memory_threshold_mb,
    :worker_memory_limit_mb,
    :heartbeat,
    :pool_identifier
  ]

  @known_keys @legacy_keys ++
                [
                  :name,
                  :max_queue_size,
                  :queue_timeout,
                  :startup_timeout,
                  :crash_barrier,
                  :cwd
                ]

  @type pool_name :: atom()

  @typedoc """
  Normalized pool configuration returned by `normalize_pool_config/1`: every
  key listed in the module doc is present.
  """
  @type pool_config :: %{
          required(:name) => atom(),
          required(:worker_profile) => :process | :thread,
          required(:pool_size) => pos_integer(),
          required(:adapter_module) => module(),
          required(:adapter_args) => [String.t()],
          required(:adapter_env) => [{String.t(), String.t()}],
          required(:capacity_strategy) => :pool | :profile | :hybrid,
          required(:affinity) => :hint | :strict_queue | :strict_fail_fast,
          required(:pool_identifier) => atom() | nil,
          required(:worker_ttl) => :infinity | {pos_integer(), :seconds | :minutes | :hours},
          required(:worker_max_requests) => :infinity | pos_integer(),
          required(:heartbeat) => map(),
          required(:startup_batch_size) => pos_integer(),
          required(:startup_batch_delay_ms) => non_neg_integer(),
          required(:threads_per_worker) => pos_integer(),
          required(:thread_safety_checks) => boolean(),
          optional(atom()) => term()
        }

  @type normalized_pool_config :: pool_config()
  @type validation_result :: {:ok, [pool_config()]} | {:error, term()}
  @type grpc_listener_mode :: :internal | :external | :external_pool
  @type grpc_listener_config :: %{
          mode: grpc_listener_mode(),
          host: String.t(),
          bind_host: String.t(),
          port: non_neg_integer() | nil,
          base_port: pos_integer() | nil,
          pool_size: pos_integer() | nil
        }

  @doc "True unless `config :snakepit, pooling_enabled: false`."
  @spec pooling_enabled?() :: boolean()
  def pooling_enabled?, do: Application.get_env(:snakepit, :pooling_enabled, true) != false

  @doc "True unless `config :snakepit, fork_server: false` (see `Snakepit.ForkServer`)."
  @spec fork_server?() :: boolean()
  def fork_server?, do: Defaults.fork_server() != false

  # -- pools ------------------------------------------------------------------

  @doc """
  The validated, normalized configs of every pool: from `pools:` when set,
  else one `:default` pool from the legacy keys.

  Returns `{:ok, [config]}` or `{:error, {kind, message}}` where the message
  names the pool, the key and the bad value.
  """
  @spec get_pool_configs() :: validation_result()
  def get_pool_configs do
    case Application.get_env(:snakepit, :pools) do
      nil ->
        normalize_all([legacy_pool()])

      [] ->
        {:error, {:invalid_pools, "pools must list at least one pool, got: []"}}

      pools when is_list(pools) ->
        normalize_all(pools)

      other ->
        {:error, {:invalid_pools, "pools must be a list of maps, got: #{inspect(other)}"}}
    end
  end

  @doc """
  The configuration of the pool called `pool_name`: `{:ok, config}`,
  `{:error, :pool_not_found}`, or the error of `get_pool_configs/0`.
  """
  @spec get_pool_config(atom()) :: {:ok, pool_config()} | {:error, term()}
  def get_pool_config(pool_name) do
    with {:ok, pools} <- get_pool_configs() do
      case Enum.find(pools, &(&1.name == pool_name)) do
        nil -> {:error, :pool_not_found}
        pool -> {:ok, pool}
      end
    end
  end

  @doc """
  Validates and normalizes a list of pool configs; names must be unique.
  """
  @spec normalize_all([map() | keyword()]) :: validation_result()
  def normalize_all(pools) when is_list(pools) do
    Enum.reduce_while(pools, {:ok, []}, fn pool, {:ok, acc} ->
      with {:ok, pool} <- validate_pool_config(pool),
           :ok <- unique_name(pool, acc) do
        {:cont, {:ok, acc ++ [pool]}}
      else
        error -> {:halt, error}
      end
    end)
  end

  def normalize_all(other),
    do: {:error, {:invalid_pools, "pools must be a list of maps, got: #{inspect(other)}"}}

  defp unique_name(%{name: name}, acc) do
    if Enum.any?(acc, &(&1.name == name)),
      do: {:error, {:duplicate_pool, "pool name #{inspect(name)} is used twice"}},
      else: :ok
  end

  defp legacy_pool do
    pool_config = Application.get_env(:snakepit, :pool_config, %{}) |> Map.new()

    top_level =
      for key <- @legacy_keys,
          {:ok, value} <- [Application.fetch_env(:snakepit, key)],
          into: %{},
          do: {key, value}

    %{name: :default} |> Map.merge(top_level) |> Map.merge(pool_config)
  end

  @doc """
  Validates one pool configuration (map or keyword) and returns it
  normalized: `{:ok, config}` or `{:error, {:invalid_pool_config, message}}`
  where the message names the key and the value.

      iex> {:error, {:invalid_pool_config, message}} =
      ...>   Snakepit.Config.validate_pool_config(%{name: :p, pool_size: 0})
      iex> message
      "pool :p: pool_size must be a positive integer, got: 0"
  """
  @spec validate_pool_config(map() | keyword()) :: {:ok, pool_config()} | {:error, term()}
  def validate_pool_config(config) when is_list(config) do
    if Keyword.keyword?(config),
      do: validate_pool_config(Map.new(config)),
      else: invalid(nil, "a pool config must be a map or keyword list, got: #{inspect(config)}")
  end

  def validate_pool_config(config) when is_map(config) do
    name = Map.get(config, :name, :default)

    with :ok <- check_known_keys(name, config),
         :ok <- check_fields(name, config),
         normalized = normalize_pool_config(config),
         :ok <- check_limits(normalized) do
      {:ok, normalized}
    end
  end

  def validate_pool_config(other),
    do: invalid(nil, "a pool config must be a map or keyword list, got: #{inspect(other)}")

  defp check_known_keys(name, config) do
    case Enum.reject(Map.keys(config), &(&1 in @known_keys)) do
      [] ->
        :ok

      [key | _] ->
        invalid(
          name,
          "unknown key #{inspect(key)} (value #{inspect(config[key])}); known keys: " <>
            Enum.map_join(Enum.sort(@known_keys), ", ", &inspect/1)
        )
    end
  end

  defp check_fields(name, config) do
    checks = [
      {:name, &is_atom/1, "an atom"},
      {:pool_size, &pos_int?/1, "a positive integer"},
      {:worker_profile, &(&1 in @profiles), "one of #{inspect(@profiles)}"},
      {:affinity, &(&1 in @affinities), "one of #{inspect(@affinities)}"},
      {:capacity_strategy, &(&1 in @capacity_strategies),
       "one of #{inspect(@capacity_strategies)}"},
      {:adapter_module, &(is_atom(&1) and &1 != nil), "a module"},
      {:adapter_args, &string_list?/1, "a list of strings"},
      {:adapter_env, &env?/1, "a list of {name, value} string pairs (or a map)"},
      {:pool_identifier, &is_atom/1, "an atom or nil"},
      {:threads_per_worker, &pos_int?/1, "a positive integer"},
      {:thread_safety_checks, &is_boolean/1, "a boolean"},
      {:startup_batch_size, &pos_int?/1, "a positive integer"},
      {:startup_batch_delay_ms, &non_neg_int?/1, "a non-negative integer (ms)"},
      {:startup_timeout, &pos_int?/1, "a positive integer (ms)"},
      {:max_queue_size, &non_neg_int?/1, "a non-negative integer"},
      {:queue_timeout, &timeout?/1, "a positive integer (ms) or :infinity"},
      {:worker_ttl, &ttl?/1, ":infinity or {n, :seconds | :minutes | :hours} with n > 0"},
      {:worker_max_requests, &(&1 == :infinity or pos_int?(&1)),
       ":infinity or a positive integer"},
      {:memory_threshold_mb, &(is_nil(&1) or pos_int?(&1)), "nil or a positive integer (MB)"},
      {:worker_memory_limit_mb, &(is_nil(&1) or pos_int?(&1)), "nil or a positive integer (MB)"},
      {:heartbeat, &heartbeat?/1,
       "a map or keyword list with keys among #{inspect(@heartbeat_keys)}"},
      {:crash_barrier, &(is_map(&1) or Keyword.keyword?(&1)), "a map or keyword list"},
      {:cwd, &(is_nil(&1) or is_binary(&1)), "a directory path"}
    ]

    Enum.find_value(checks, :ok, fn {key, valid?, expected} ->
      case Map.fetch(config, key) do
        {:ok, value} ->
          unless valid?.(value),
            do: invalid(name, "#{key} must be #{expected}, got: #{inspect(value)}")

        :error ->
          nil
      end
    end)
  end

  defp check_limits(config) do
    max = Defaults.pool_max_workers()

    if config.pool_size > max do
      invalid(
        config.name,
        "pool_size #{config.pool_size} exceeds pool_max_workers (#{max}); " <>
          "lower pool_size or raise config :snakepit, pool_max_workers"
      )
    else
      :ok
    end
  end

  defp invalid(nil, message), do: {:error, {:invalid_pool_config, message}}

  defp invalid(name, message),
    do: {:error, {:invalid_pool_config, "pool #{inspect(name)}: #{message}"}}

  defp pos_int?(v), do: is_integer(v) and v > 0
  defp non_neg_int?(v), do: is_integer(v) and v >= 0
  defp timeout?(v), do: v == :infinity or pos_int?(v)
  defp string_list?(list), do: is_list(list) and Enum.all?(list, &is_binary/1)

  defp env?(env) when is_map(env), do: env?(Map.to_list(env))

  defp env?(env),
    do: is_list(env) and Enum.all?(env, &match?({k, v} when is_binary(k) and is_binary(v), &1))

  defp ttl?(:infinity), do: true
  defp ttl?({n, unit}), do: pos_int?(n) and unit in @ttl_units
  defp ttl?(_), do: false

  defp heartbeat?(hb) when is_list(hb), do: Keyword.keyword?(hb) and heartbeat?(Map.new(hb))

  defp heartbeat?(hb) when is_map(hb) do
    Enum.all?(hb, fn
      {k, v} when k in [:enabled, :dependent] -> is_boolean(v)
      {:initial_delay_ms, v} -> non_neg_int?(v)
      {k, v} when k in @heartbeat_keys -> pos_int?(v)
      _ -> false
    end)
  end

  defp heartbeat?(_), do: false

  @doc """
  Fills in every default of a pool configuration. Does not validate; see
  `validate_pool_config/1`.

      iex> config = Snakepit.Config.normalize_pool_config(%{name: :test})
      iex> {config.worker_profile, config.affinity, config.startup_batch_size}
      {:process, :hint, 8}
  """
  @spec normalize_pool_config(map() | keyword()) :: pool_config()
  def normalize_pool_config(config) when is_list(config),
    do: normalize_pool_config(Map.new(config))

  def normalize_pool_config(config) when is_map(config) do
    defaults = %{
      name: :default,
      worker_profile: Defaults.default_worker_profile(),
      pool_size: Defaults.default_pool_size(),
      adapter_module: Snakepit.Adapters.GRPCPython,
      adapter_args: [],
      adapter_env: [],
      capacity_strategy: Defaults.default_capacity_strategy(),
      affinity: Defaults.default_affinity_mode(),
      pool_identifier: nil,
      max_queue_size: Defaults.pool_max_queue_size(),
      queue_timeout: Defaults.pool_queue_timeout(),
      startup_timeout: Defaults.grpc_server_ready_timeout(),
      worker_ttl: :infinity,
      worker_max_requests: :infinity,
      memory_threshold_mb: nil,
      worker_memory_limit_mb: nil,
      startup_batch_size: default_batch_size(),
      startup_batch_delay_ms: default_batch_delay(),
      threads_per_worker: Defaults.config_default_threads_per_worker(),
      thread_safety_checks: false,
      crash_barrier: %{},
      cwd: nil
    }

    defaults
    |> Map.merge(config)
    |> Map.update!(:adapter_env, &normalize_env/1)
    |> Map.update!(:crash_barrier, &Map.new/1)
    |> Map.put(:heartbeat, Map.merge(heartbeat_defaults(), Map.new(config[:heartbeat] || %{})))
  end

  defp normalize_env(env) when is_map(env), do: Map.to_list(env)
  defp normalize_env(env), do: env

  # A pool's batch settings: the pool's own keys, else the legacy global
  # `pool_startup_batch_*` keys when an operator set them, else the
  # per-profile defaults.
  defp default_batch_size do
    case Application.fetch_env(:snakepit, :pool_startup_batch_size) do
      {:ok, n} -> n
      :error -> Defaults.config_default_batch_size()
    end
  end

  defp default_batch_delay do
    case Application.fetch_env(:snakepit, :pool_startup_batch_delay_ms) do
      {:ok, n} -> n
      :error -> Defaults.config_default_batch_delay()
    end
  end

  @doc """
  Is the pool using the thread profile?

      iex> Snakepit.Config.thread_profile?(%{worker_profile: :thread})
      true
      iex> Snakepit.Config.thread_profile?(%{worker_profile: :process})
      false
  """
  @spec thread_profile?(map()) :: boolean()
  def thread_profile?(config), do: Map.get(config, :worker_profile) == :thread

  @doc """
  The module implementing `Snakepit.WorkerProfile` for a pool.

      iex> Snakepit.Config.get_profile_module(%{worker_profile: :thread})
      Snakepit.WorkerProfile.Thread
  """
  @spec get_profile_module(map()) :: module()
  def get_profile_module(%{worker_profile: :thread}), do: Snakepit.WorkerProfile.Thread
  def get_profile_module(%{worker_profile: module}) when module not in @profiles, do: module
  def get_profile_module(_config), do: Snakepit.WorkerProfile.Process

  @doc """
  The heartbeat settings every pool starts from: the `Snakepit.Defaults`
  heartbeat values, merged with `config :snakepit, :heartbeat, ...`.

  Keys: `enabled`, `ping_interval_ms`, `timeout_ms`, `max_missed_heartbeats`,
  `initial_delay_ms`, `dependent`. The same keys reach the Python worker
  (`snakepit_bridge.heartbeat.HeartbeatConfig`), so both sides agree.
  """
  @spec heartbeat_defaults() :: map()
  def heartbeat_defaults do
    base = %{
      enabled: true,
      ping_interval_ms: Defaults.heartbeat_ping_interval_ms(),
      timeout_ms: Defaults.heartbeat_timeout_ms(),
      max_missed_heartbeats: Defaults.heartbeat_max_missed(),
      initial_delay_ms: Defaults.heartbeat_initial_delay_ms(),
      dependent: true
    }

    overrides = Application.get_env(:snakepit, :heartbeat, %{}) |> Map.new()
    Map.merge(base, Map.take(overrides, @heartbeat_keys))
  end

  # -- gRPC listener ------------------------------------------------------------

  @doc """
  The validated gRPC listener configuration: `{:ok, map}` or
  `{:error, {:invalid_grpc_listener, message}}`. Without any configuration
  the listener is `:internal` on `Snakepit.Defaults.grpc_internal_host/0`
  with an ephemeral port.
  """
  @spec grpc_listener_config() :: {:ok, grpc_listener_config()} | {:error, term()}
  def grpc_listener_config do
    case Application.get_env(:snakepit, :grpc_listener) do
      nil -> legacy_listener()
      listener when is_list(listener) or is_map(listener) -> listener(Map.new(listener))
      other -> listener_error("grpc_listener must be a keyword list, got: #{inspect(other)}")
    end
  end

  @doc "Like `grpc_listener_config/0`, raising `ArgumentError` on a bad configuration."
  @spec grpc_listener_config!() :: grpc_listener_config()
  def grpc_listener_config! do
    case grpc_listener_config() do
      {:ok, config} -> config
      {:error, {_, message}} -> raise ArgumentError, message
    end
  end

  defp legacy_listener do
    port = Application.get_env(:snakepit, :grpc_port)
    host = Application.get_env(:snakepit, :grpc_host)

    if port == nil and host == nil,
      do: listener(%{mode: :internal}),
      else: listener(%{mode: :external, host: host || "localhost", port: port || 0})
  end

  defp listener(%{mode: :internal} = l) do
    host = Map.get(l, :host, Defaults.grpc_internal_host())

    with :ok <- listener_host(:host, host),
         :ok <- listener_port(:port, Map.get(l, :port, 0), 0) do
      {:ok,
       %{
         mode: :internal,
         host: host,
         bind_host: host,
         port: Map.get(l, :port, 0),
         base_port: nil,
         pool_size: nil
       }}
    end
  end

  defp listener(%{mode: :external} = l) do
    with {:ok, host} <- required(l, :host, :external),
         {:ok, port} <- required(l, :port, :external),
         bind_host = Map.get(l, :bind_host, host),
         :ok <- listener_host(:host, host),
         :ok <- listener_host(:bind_host, bind_host),
         :ok <- listener_port(:port, port, 0) do
      {:ok,
       %{
         mode: :external,
         host: host,
         bind_host: bind_host,
         port: port,
         base_port: nil,
         pool_size: nil
       }}
    end
  end

  defp listener(%{mode: :external_pool} = l) do
    with {:ok, host} <- required(l, :host, :external_pool),
         {:ok, base_port} <- required(l, :base_port, :external_pool),
         size = Map.get(l, :pool_size, Defaults.grpc_port_pool_size()),
         bind_host = Map.get(l, :bind_host, host),
         :ok <- listener_host(:host, host),
         :ok <- listener_host(:bind_host, bind_host),
         :ok <- listener_port(:base_port, base_port, 1),
         :ok <- listener_size(size, base_port) do
      {:ok,
       %{
         mode: :external_pool,
         host: host,
         bind_host: bind_host,
         port: nil,
         base_port: base_port,
         pool_size: size
       }}
    end
  end

  defp listener(%{mode: mode}),
    do:
      listener_error(
        "grpc_listener mode must be :internal, :external or :external_pool, got: #{inspect(mode)}"
      )

  defp listener(_),
    do: listener_error("grpc_listener needs a mode (:internal, :external or :external_pool)")

  defp required(l, key, mode) do
    case Map.fetch(l, key) do
      {:ok, value} -> {:ok, value}
      :error -> listener_error("grpc_listener mode #{inspect(mode)} needs #{key}")
    end
  end

  defp listener_host(key, host) do
    if is_binary(host) and host != "",
      do: :ok,
      else:
        listener_error("grpc_listener #{key} must be a non-empty string, got: #{inspect(host)}")
  end

  defp listener_port(key, port, min) do
    if is_integer(port) and port >= min and port <= 65_535,
      do: :ok,
      else:
        listener_error(
          "grpc_listener #{key} must be an integer in #{min}..65535, got: #{inspect(port)}"
        )
  end

  defp listener_size(size, base_port) do
    cond do
      not pos_int?(size) ->
        listener_error(
          "grpc_listener pool_size must be a positive integer, got: #{inspect(size)}"
        )

      base_port + size - 1 > 65_535 ->
        listener_error(
          "grpc_listener base_port #{base_port} + pool_size #{size} runs past port 65535"
        )

      true ->
        :ok
    end
  end

  defp listener_error(message), do: {:error, {:invalid_grpc_listener, message}}

  @doc "Interval (ms) between port checks when reusing a gRPC listener."
  @spec grpc_listener_port_check_interval_ms() :: pos_integer()
  def grpc_listener_port_check_interval_ms, do: Defaults.grpc_listener_port_check_interval_ms()

  @doc "How long (ms) to wait for the gRPC listener to publish its port."
  @spec grpc_listener_ready_timeout_ms() :: pos_integer()
  def grpc_listener_ready_timeout_ms, do: Defaults.grpc_listener_ready_timeout_ms()

  @doc "Attempts to reuse or rebind a gRPC listener before failing."
  @spec grpc_listener_reuse_attempts() :: pos_integer()
  def grpc_listener_reuse_attempts, do: Defaults.grpc_listener_reuse_attempts()

  @doc "Delay (ms) between gRPC listener reuse attempts."
  @spec grpc_listener_reuse_retry_delay_ms() :: pos_integer()
  def grpc_listener_reuse_retry_delay_ms, do: Defaults.grpc_listener_reuse_retry_delay_ms()

  @doc "How long (ms) to wait for an already started listener to publish its port."
  @spec grpc_listener_reuse_wait_timeout_ms() :: pos_integer()
  def grpc_listener_reuse_wait_timeout_ms, do: Defaults.grpc_listener_reuse_wait_timeout_ms()

  # -- TCP transport ------------------------------------------------------------

  @doc """
  The host TCP listeners bind to (`tcp_host`, loopback by default):
  `{:ok, host}`, or `{:error, message}` for a non-loopback address without
  `allow_non_loopback_bind: true`.

      iex> Snakepit.Config.tcp_host("127.0.0.1", false)
      {:ok, "127.0.0.1"}
      iex> {:error, message} = Snakepit.Config.tcp_host("0.0.0.0", false)
      iex> message =~ "allow_non_loopback_bind"
      true
  """
  @spec tcp_host(String.t(), boolean()) :: {:ok, String.t()} | {:error, String.t()}
  def tcp_host(host \\ Defaults.tcp_host(), allowed \\ Defaults.allow_non_loopback_bind()) do
    cond do
      not is_binary(host) or host == "" ->
        {:error, "tcp_host must be an address string, got: #{inspect(host)}"}

      loopback?(host) or allowed == true ->
        {:ok, host}

      true ->
        {:error,
         "tcp_host #{inspect(host)} is not a loopback address: any machine that reaches it " <>
           "could talk to the workers. Bind to 127.0.0.1 (the default), or set " <>
           "allow_non_loopback_bind: true to accept that"}
    end
  end

  @doc "Is `host` a loopback address (127.0.0.0/8, ::1, localhost)?"
  @spec loopback?(String.t()) :: boolean()
  def loopback?("localhost"), do: true

  def loopback?(host) do
    case :inet.parse_address(String.to_charlist(host)) do
      {:ok, {127, _, _, _}} -> true
      {:ok, {0, 0, 0, 0, 0, 0, 0, 1}} -> true
      _ -> false
    end
  end

  @doc "`host:0` for an ephemeral TCP listener on `tcp_host/2` (IPv6 in brackets)."
  @spec tcp_listen_address(String.t()) :: String.t()
  def tcp_listen_address(host), do: if(host =~ ":", do: "[#{host}]:0", else: "#{host}:0")

  # -- instance ---------------------------------------------------------------

  @doc "This instance's name: `config :snakepit, instance_name:`, else `SNAKEPIT_INSTANCE_NAME`, else nil."
  @spec instance_name() :: String.t() | nil
  def instance_name, do: setting(:instance_name, "SNAKEPIT_INSTANCE_NAME")

  @doc """
  `instance_name/0` made safe for command lines and file names: characters
  other than letters, digits, `_`, `-` and `.` become `_`; at most 64 characters.
  """
  @spec instance_name_identifier() :: String.t() | nil
  def instance_name_identifier, do: identifier(instance_name())

  @doc "This run's isolation token: `config :snakepit, instance_token:`, else `SNAKEPIT_INSTANCE_TOKEN`, else nil."
  @spec instance_token() :: String.t() | nil
  def instance_token do
    case Defaults.instance_token() do
      nil -> setting(:instance_token, "SNAKEPIT_INSTANCE_TOKEN")
      token -> blank_to_nil(to_string(token))
    end
  end

  @doc "`instance_token/0` made safe for command lines and file names (see `instance_name_identifier/0`)."
  @spec instance_token_identifier() :: String.t() | nil
  def instance_token_identifier, do: identifier(instance_token())

  @doc "This instance's name and token identifiers, as `Snakepit.ProcessKiller.find_by_run_id/2` filters take them."
  @spec instance_filters() :: [instance_name: String.t() | nil, instance_token: String.t() | nil]
  def instance_filters,
    do: [instance_name: instance_name_identifier(), instance_token: instance_token_identifier()]

  defp setting(key, env_var) do
    case Application.get_env(:snakepit, key) do
      nil -> blank_to_nil(System.get_env(env_var))
      value -> blank_to_nil(to_string(value))
    end
  end

  defp blank_to_nil(nil), do: nil

  defp blank_to_nil(value) do
    case String.trim(value) do
      "" -> nil
      trimmed -> trimmed
    end
  end

  defp identifier(nil), do: nil

  defp identifier(value) do
    value |> String.replace(~r/[^A-Za-z0-9_.-]/u, "_") |> String.slice(0, 64)
  end

  @doc """
  Directory for runtime state that outlives a run (e.g. the process
  registry): `config :snakepit, data_dir:`, else `SNAKEPIT_DATA_DIR`, else
  the user's cache directory (`~/.cache/snakepit` on Linux).
  """
  @spec data_dir() :: String.t()
  def data_dir do
    case setting(:data_dir, "SNAKEPIT_DATA_DIR") do
      nil -> :filename.basedir(:user_cache, "snakepit") |> to_string()
      dir -> Path.expand(dir)
    end
  end
end
