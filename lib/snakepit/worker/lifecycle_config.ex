defmodule Snakepit.Worker.LifecycleConfig do
  @moduledoc """
  The part of a pool's configuration that `Snakepit.Worker.LifecycleManager`
  needs to decide when to recycle a worker and how to start its
  replacement, as an explicit struct.

  `ensure/3` builds it from a normalized pool config (or a worker config
  holding one under `:config`); `to_worker_config/2` turns it back into the
  worker config of a replacement.
  """

  alias Snakepit.{Config, GRPCWorker}

  defstruct adapter_args: [],
            adapter_env: [],
            adapter_module: Snakepit.Adapters.GRPCPython,
            base_worker_config: %{},
            memory_threshold_mb: nil,
            pool_identifier: nil,
            pool_name: nil,
            profile_module: Snakepit.WorkerProfile.Process,
            raw_worker_ttl: :infinity,
            worker_max_requests: :infinity,
            worker_module: GRPCWorker,
            worker_profile: :process,
            worker_ttl_seconds: :infinity

  @type t :: %__MODULE__{
          adapter_args: list(),
          adapter_env: list(),
          adapter_module: module(),
          base_worker_config: map(),
          memory_threshold_mb: nil | pos_integer(),
          pool_identifier: atom() | nil,
          pool_name: term(),
          profile_module: module(),
          raw_worker_ttl: term(),
          worker_max_requests: :infinity | pos_integer(),
          worker_module: module(),
          worker_profile: atom() | module(),
          worker_ttl_seconds: :infinity | non_neg_integer()
        }

  @doc """
  The lifecycle config of `config` (a struct is returned as is). `pool_name`
  is used when the config names no pool. Option: `:worker_module`.

      iex> lc = Snakepit.Worker.LifecycleConfig.ensure(:p, %{worker_ttl: {2, :minutes}, worker_max_requests: 10})
      iex> {lc.pool_name, lc.worker_ttl_seconds, lc.worker_max_requests}
      {:p, 120, 10}
  """
  @spec ensure(term(), map() | t(), keyword()) :: t()
  def ensure(pool_name, config, opts \\ [])
  def ensure(_pool_name, %__MODULE__{} = config, _opts), do: config

  def ensure(pool_name, %{config: pool_config} = worker_config, opts) when is_map(pool_config),
    do: %{ensure(pool_name, pool_config, opts) | base_worker_config: worker_config}

  def ensure(pool_name, config, opts) when is_map(config) do
    ttl = Map.get(config, :worker_ttl, :infinity)

    %__MODULE__{
      adapter_args: Map.get(config, :adapter_args, []),
      adapter_env: Map.get(config, :adapter_env, []),
      adapter_module: Map.get(config, :adapter_module, Snakepit.Adapters.GRPCPython),
      base_worker_config: config,
      memory_threshold_mb: Map.get(config, :memory_threshold_mb),
      pool_identifier: Map.get(config, :pool_identifier),
      pool_name: Map.get(config, :name, pool_name),
      profile_module: Config.get_profile_module(Map.put_new(config, :worker_profile, :process)),
      raw_worker_ttl: ttl,
      worker_max_requests: Map.get(config, :worker_max_requests, :infinity),
      worker_module: Keyword.get(opts, :worker_module, GRPCWorker),
      worker_profile: Map.get(config, :worker_profile, :process),
      worker_ttl_seconds: ttl_seconds(ttl)
    }
  end

  @doc """
  `worker_ttl` in seconds.

      iex> Snakepit.Worker.LifecycleConfig.ttl_seconds({3, :hours})
      10_800
  """
  @spec ttl_seconds(term()) :: :infinity | non_neg_integer()
  def ttl_seconds({n, :seconds}), do: n
  def ttl_seconds({n, :minutes}), do: n * 60
  def ttl_seconds({n, :hours}), do: n * 3600
  def ttl_seconds(n) when is_integer(n) and n >= 0, do: n
  def ttl_seconds(_), do: :infinity

  @doc "The worker config of a replacement worker `worker_id`."
  @spec to_worker_config(t(), String.t()) :: map()
  def to_worker_config(%__MODULE__{} = config, worker_id) do
    pool_config =
      config.base_worker_config
      |> Map.get(:config, config.base_worker_config)
      |> Map.merge(%{
        name: config.pool_name,
        adapter_module: config.adapter_module,
        adapter_args: config.adapter_args,
        adapter_env: config.adapter_env,
        worker_profile: config.worker_profile
      })

    %{id: worker_id, pool_name: config.pool_name, config: pool_config}
  end
end
