defmodule Snakepit.Config do
  @moduledoc """
  Pool configuration: reads `config :snakepit` once per pool start,
  accepts the legacy single-pool keys (`pooling_enabled`, `adapter_module`,
  `adapter_args`, `pool_size`, `pool_config`) and the multi-pool `pools:`
  list, and normalizes every pool into one canonical map.
  """

  alias Snakepit.Defaults

  @profiles [:process, :thread]
  @affinities [:hint, :strict_queue, :strict_fail_fast]

  @type pool_config :: %{
          required(:name) => atom(),
          required(:worker_profile) => :process | :thread,
          required(:pool_size) => pos_integer(),
          required(:adapter_module) => module(),
          required(:adapter_args) => [String.t()],
          required(:adapter_env) => [{String.t(), String.t()}],
          required(:affinity) => :hint | :strict_queue | :strict_fail_fast,
          optional(atom()) => term()
        }

  @doc """
  The instance name that scopes this node's workers and runtime state
  (`config :snakepit, instance_name:` or `SNAKEPIT_INSTANCE_NAME`), or nil.
  """
  @spec instance_name() :: String.t() | nil
  def instance_name, do: setting(:instance_name, "SNAKEPIT_INSTANCE_NAME")

  @doc """
  A token for strong isolation between concurrent runs of one instance
  (`config :snakepit, instance_token:` or `SNAKEPIT_INSTANCE_TOKEN`), or nil.
  """
  @spec instance_token() :: String.t() | nil
  def instance_token, do: setting(:instance_token, "SNAKEPIT_INSTANCE_TOKEN")

  @doc "`instance_name/0` reduced to characters safe on a command line and in file names."
  @spec instance_name_identifier() :: String.t() | nil
  def instance_name_identifier, do: identifier(instance_name())

  @doc "`instance_token/0` reduced to characters safe on a command line and in file names."
  @spec instance_token_identifier() :: String.t() | nil
  def instance_token_identifier, do: identifier(instance_token())

  defp setting(key, env) do
    case Application.get_env(:snakepit, key) || System.get_env(env) do
      nil -> nil
      "" -> nil
      value -> to_string(value)
    end
  end

  defp identifier(nil), do: nil
  defp identifier(value), do: String.replace(value, ~r/[^A-Za-z0-9_.-]/, "_")

  @doc """
  Where runtime state that must outlive a crash is kept (the process
  registry): `config :snakepit, data_dir:`, else the user cache directory
  (`~/.cache/snakepit`).
  """
  @spec data_dir() :: String.t()
  def data_dir do
    Application.get_env(:snakepit, :data_dir) ||
      :filename.basedir(:user_cache, "snakepit") |> to_string()
  end

  @doc "True unless `config :snakepit, pooling_enabled: false`."

  @spec pooling_enabled?() :: boolean()
  def pooling_enabled?, do: Application.get_env(:snakepit, :pooling_enabled, true) != false

  @doc """
  The normalized, validated configs of every pool: from `pools:` when set,
  else one `:default` pool from the legacy keys.
  """
  @spec get_pool_configs() :: {:ok, [pool_config()]} | {:error, term()}
  def get_pool_configs do
    raw =
      case Application.get_env(:snakepit, :pools) do
        nil -> [legacy_pool()]
        pools when is_list(pools) -> pools
        other -> {:invalid, other}
      end

    case raw do
      {:invalid, other} ->
        {:error, {:invalid_pools, "pools must be a list of maps, got: #{inspect(other)}"}}

      pools ->
        normalize_all(pools)
    end
  end

  @doc "The config of the pool called `name`."
  @spec get_pool_config(atom()) :: {:ok, pool_config()} | {:error, term()}
  def get_pool_config(name) do
    with {:ok, pools} <- get_pool_configs() do
      case Enum.find(pools, &(&1.name == name)) do
        nil -> {:error, :pool_not_found}
        pool -> {:ok, pool}
      end
    end
  end

  @doc false
  def normalize_all(pools) do
    Enum.reduce_while(pools, {:ok, []}, fn pool, {:ok, acc} ->
      with {:ok, pool} <- validate_pool_config(pool),
           :ok <- unique_name(pool, acc) do
        {:cont, {:ok, acc ++ [normalize_pool_config(pool)]}}
      else
        error -> {:halt, error}
      end
    end)
  end

  defp unique_name(%{name: name}, acc) do
    if Enum.any?(acc, &(&1.name == name)),
      do: {:error, {:duplicate_pool, "pool name #{inspect(name)} is used twice"}},
      else: :ok
  end

  defp legacy_pool do
    pool_config = Application.get_env(:snakepit, :pool_config, %{}) |> Map.new()

    %{name: :default}
    |> put_env(:adapter_module)
    |> put_env(:adapter_args)
    |> put_env(:adapter_env)
    |> put_env(:pool_size)
    |> put_env(:affinity)
    |> Map.merge(pool_config)
  end

  defp put_env(map, key) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, value} -> Map.put(map, key, value)
      :error -> map
    end
  end

  @doc """
  Checks one pool's user config. The error names the key and the value:
  `{:error, {:invalid_pool_config, message}}`.
  """
  @spec validate_pool_config(map() | keyword()) :: {:ok, map()} | {:error, term()}
  def validate_pool_config(config) when is_list(config), do: validate_pool_config(Map.new(config))

  def validate_pool_config(config) when is_map(config) do
    checks = [
      {:name, &is_atom/1, "an atom"},
      {:pool_size, &(is_integer(&1) and &1 > 0), "a positive integer"},
      {:worker_profile, &(&1 in @profiles), "one of #{inspect(@profiles)}"},
      {:affinity, &(&1 in @affinities), "one of #{inspect(@affinities)}"},
      {:adapter_module, &is_atom/1, "a module"},
      {:adapter_args, &string_list?/1, "a list of strings"},
      {:adapter_env, &env_list?/1, "a list of {name, value} string pairs"},
      {:threads_per_worker, &(is_integer(&1) and &1 > 0), "a positive integer"},
      {:startup_timeout, &(is_integer(&1) and &1 > 0), "a positive integer (ms)"}
    ]

    Enum.find_value(checks, {:ok, config}, fn {key, valid?, expected} ->
      case Map.fetch(config, key) do
        {:ok, value} ->
          if valid?.(value),
            do: nil,
            else:
              {:error,
               {:invalid_pool_config, "#{key} must be #{expected}, got: #{inspect(value)}"}}

        :error ->
          nil
      end
    end)
  end

  def validate_pool_config(other),
    do: {:error, {:invalid_pool_config, "a pool config must be a map, got: #{inspect(other)}"}}

  defp string_list?(list), do: is_list(list) and Enum.all?(list, &is_binary/1)

  defp env_list?(list) do
    is_list(list) and Enum.all?(list, &match?({k, v} when is_binary(k) and is_binary(v), &1))
  end

  @doc "Fills in every default of a (validated) pool config."
  @spec normalize_pool_config(map()) :: pool_config()
  def normalize_pool_config(config) do
    defaults = %{
      name: :default,
      worker_profile: :process,
      pool_size: Defaults.default_pool_size(),
      adapter_module: Snakepit.Adapters.GRPCPython,
      adapter_args: [],
      adapter_env: [],
      affinity: :hint,
      threads_per_worker: 1,
      startup_timeout: Defaults.grpc_server_ready_timeout(),
      max_queue_size: Defaults.pool_max_queue_size()
    }

    Map.merge(defaults, config)
  end
end
