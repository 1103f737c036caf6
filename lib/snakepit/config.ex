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

  #{Snakepit.Config.Schema.doc()}

  ## gRPC listener

  Where the Elixir bridge (the gRPC server Python calls back into) listens:
  `:grpc_listener` (or the legacy `:grpc_port` / `:grpc_host`), see
  `Snakepit.Config.Listener`:

      config :snakepit, grpc_listener: [mode: :internal]
      config :snakepit, grpc_listener: [mode: :external, host: "127.0.0.1", port: 50_051]

  ## Instance isolation

  `:instance_name` (or `SNAKEPIT_INSTANCE_NAME`) names this instance;
  `:instance_token` (or `SNAKEPIT_INSTANCE_TOKEN`) isolates concurrent runs;
  runtime state is kept under `data_dir/0`.
  """

  require Logger

  alias Snakepit.Defaults

  alias Snakepit.Config.{Listener, Schema}

  @type pool_name :: atom()

  @typedoc """
  Normalized pool configuration returned by `normalize_pool_config/1`: every
  key listed in the module doc is present.
  """
  @type pool_config :: unquote(Schema.pool_config_type())

  @type normalized_pool_config :: pool_config()
  @type validation_result :: {:ok, [pool_config()]} | {:error, term()}
  @type grpc_listener_config :: Listener.t()

  @doc "True unless `config :snakepit, pooling_enabled: false`."
  @spec pooling_enabled?() :: boolean()
  def pooling_enabled?, do: Defaults.pooling_enabled() != false

  @doc "True unless `config :snakepit, fork_server: false` (see `Snakepit.Worker.ForkServer`)."
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
    case Defaults.pools() do
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
    pool_config = Defaults.pool_config() |> Map.new()

    top_level =
      for key <- Schema.legacy_keys(),
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

    with :ok <- schema_check(name, config),
         normalized = normalize_pool_config(config),
         :ok <- check_limits(normalized) do
      warn_ignored(normalized)
      {:ok, normalized}
    end
  end

  def validate_pool_config(other),
    do: invalid(nil, "a pool config must be a map or keyword list, got: #{inspect(other)}")

  defp schema_check(name, config) do
    case Schema.check(config) do
      :ok -> :ok
      {:error, message} -> invalid(name, message)
    end
  end

  # Accepted for compatibility, without effect: said once per VM.
  defp warn_ignored(%{capacity_strategy: strategy}) when strategy != :pool do
    key = {__MODULE__, :capacity_strategy_warned}

    unless :persistent_term.get(key, false) do
      :persistent_term.put(key, true)

      Logger.warning(
        "Snakepit: capacity_strategy #{inspect(strategy)} has no effect; a worker's capacity " <>
          "comes from its profile (1 for :process, threads_per_worker for :thread)"
      )
    end
  end

  defp warn_ignored(_config), do: :ok

  defp check_limits(config) do
    max = Defaults.pool_max_workers()

    cond do
      config.pool_size > max ->
        invalid(
          config.name,
          "pool_size #{config.pool_size} exceeds pool_max_workers (#{max}); " <>
            "lower pool_size or raise config :snakepit, pool_max_workers"
        )

      config.min_workers > config.max_workers ->
        invalid(
          config.name,
          "min_workers #{config.min_workers} exceeds max_workers #{config.max_workers}"
        )

      config.max_workers > max ->
        invalid(
          config.name,
          "max_workers #{config.max_workers} exceeds pool_max_workers (#{max}); " <>
            "lower max_workers or raise config :snakepit, pool_max_workers"
        )

      true ->
        :ok
    end
  end

  defp invalid(nil, message), do: {:error, {:invalid_pool_config, message}}

  defp invalid(name, message),
    do: {:error, {:invalid_pool_config, "pool #{inspect(name)}: #{message}"}}

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
    Schema.defaults()
    |> Map.merge(config)
    |> Map.update!(:adapter_env, &normalize_env/1)
    |> Map.update!(:crash_barrier, &Map.new/1)
    |> Map.put(:heartbeat, Map.merge(heartbeat_defaults(), Map.new(config[:heartbeat] || %{})))
    |> normalize_size()
  end

  # A fixed pool is the range pool_size..pool_size. An elastic one (either
  # bound given) starts at min_workers, which pool_size then reports.
  defp normalize_size(%{min_workers: min, max_workers: max} = config)
       when is_integer(min) and is_integer(max),
       do: %{config | pool_size: min}

  defp normalize_size(%{min_workers: min} = config) when is_integer(min),
    do: Map.merge(config, %{max_workers: max(config.pool_size, min), pool_size: min})

  defp normalize_size(%{max_workers: max} = config) when is_integer(max),
    do: Map.merge(config, %{min_workers: 1, pool_size: 1})

  defp normalize_size(config),
    do: Map.merge(config, %{min_workers: config.pool_size, max_workers: config.pool_size})

  @doc """
  Is the pool elastic (it may grow and shrink by itself, `min_workers <
  max_workers`)?

      iex> Snakepit.Config.elastic?(%{min_workers: 1, max_workers: 4})
      true
      iex> Snakepit.Config.elastic?(%{min_workers: 2, max_workers: 2})
      false
  """
  @spec elastic?(map()) :: boolean()
  def elastic?(%{min_workers: min, max_workers: max}), do: min < max
  def elastic?(_config), do: false

  defp normalize_env(env) when is_map(env), do: Map.to_list(env)
  defp normalize_env(env), do: env

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
  def get_profile_module(%{worker_profile: :process}), do: Snakepit.WorkerProfile.Process

  def get_profile_module(%{worker_profile: module}) when is_atom(module) and module != nil,
    do: module

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
    overrides = Defaults.heartbeat() |> Map.new()
    Map.merge(Schema.heartbeat_defaults(), Map.take(overrides, Schema.heartbeat_keys()))
  end

  # -- gRPC listener ------------------------------------------------------------

  @doc "The validated gRPC listener configuration (see `Snakepit.Config.Listener`)."
  @spec grpc_listener_config() :: {:ok, grpc_listener_config()} | {:error, term()}
  defdelegate grpc_listener_config(), to: Listener, as: :config

  @doc "Like `grpc_listener_config/0`, raising `ArgumentError` on a bad configuration."
  @spec grpc_listener_config!() :: grpc_listener_config()
  defdelegate grpc_listener_config!(), to: Listener, as: :config!

  # Upstream's listener tuning knobs. The bridge binds in the native core,
  # which returns the bound address at once, so there is no port to wait
  # for or rebind; the knobs are accepted and warned about at start.
  for knob <- [
        :grpc_listener_port_check_interval_ms,
        :grpc_listener_ready_timeout_ms,
        :grpc_listener_reuse_attempts,
        :grpc_listener_reuse_retry_delay_ms,
        :grpc_listener_reuse_wait_timeout_ms
      ] do
    @doc "The `#{knob}` knob: `Snakepit.Defaults.#{knob}/0` (accepted, without effect)."
    @spec unquote(knob)() :: pos_integer()
    defdelegate unquote(knob)(), to: Defaults
  end

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
    case Snakepit.Config.Settings.fetch(key) do
      {:ok, value} when value != nil -> blank_to_nil(to_string(value))
      _not_set -> blank_to_nil(System.get_env(env_var))
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
