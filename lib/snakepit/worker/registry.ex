defmodule Snakepit.Pool.Registry do
  @moduledoc """
  The registry of running workers: worker id -> `Snakepit.GRPCWorker` pid,
  with metadata.

  Every worker registers itself when it is ready, with these canonical keys:

    * `:worker_module` - the module running the worker (`Snakepit.GRPCWorker`)
    * `:pool_name` - the pool it belongs to
    * `:pool_identifier` - the pool's optional identifier for metrics
    * `:adapter_module` - the adapter that launched its process

  and also `:os_pid` (the Python process), `:worker_profile`, `:capacity`
  and `:address`. Read them with `fetch_worker/1` or
  `get_worker_metadata/1` rather than the `Registry` directly.
  """

  @canonical [:worker_module, :pool_name, :pool_identifier, :adapter_module]

  @doc "The child spec of the registry (unique keys)."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(_opts), do: Registry.child_spec(keys: :unique, name: __MODULE__)

  @doc "The canonical metadata keys every worker has."
  @spec metadata_keys() :: [atom()]
  def metadata_keys, do: @canonical

  @doc """
  A via tuple naming the process of `worker_id`.

      iex> Snakepit.Pool.Registry.via_tuple("worker_123")
      {:via, Registry, {Snakepit.Pool.Registry, "worker_123"}}
  """
  @spec via_tuple(String.t()) :: {:via, Registry, {module(), String.t()}}
  def via_tuple(worker_id), do: {:via, Registry, {__MODULE__, worker_id}}

  @doc """
  Registers the calling process as `worker_id` with `metadata` (missing
  canonical keys are set to nil).
  """
  @spec register_worker(String.t(), map()) :: :ok | {:error, term()}
  def register_worker(worker_id, metadata \\ %{}) do
    metadata = Map.merge(Map.new(@canonical, &{&1, nil}), metadata)

    case Registry.register(__MODULE__, worker_id, metadata) do
      {:ok, _} -> :ok
      {:error, _} = error -> error
    end
  end

  @doc """
  Merges `metadata` into the calling worker's metadata. Only the
  registered process itself may do this (a `Registry` rule);
  `{:error, :not_registered}` otherwise.
  """
  @spec put_metadata(String.t(), map()) :: :ok | {:error, :not_registered}
  def put_metadata(worker_id, metadata) when is_map(metadata) do
    case Registry.update_value(__MODULE__, worker_id, &Map.merge(&1 || %{}, metadata)) do
      {_new, _old} -> :ok
      :error -> {:error, :not_registered}
    end
  end

  @doc "`{:ok, {pid, metadata}}` for a registered worker, `{:error, :not_found}` otherwise."
  @spec fetch_worker(String.t()) :: {:ok, {pid(), map()}} | {:error, :not_found}
  def fetch_worker(worker_id) do
    case Registry.lookup(__MODULE__, worker_id) do
      [{pid, meta}] -> {:ok, {pid, meta}}
      [] -> {:error, :not_found}
    end
  end

  @doc "The pid of `worker_id`: `{:ok, pid}` or `{:error, :not_found}`."
  @spec get_worker_pid(String.t()) :: {:ok, pid()} | {:error, :not_found}
  def get_worker_pid(worker_id) do
    with {:ok, {pid, _}} <- fetch_worker(worker_id), do: {:ok, pid}
  end

  @doc "The metadata of `worker_id`: `{:ok, map}` or `{:error, :not_found}`."
  @spec get_worker_metadata(String.t()) :: {:ok, map()} | {:error, :not_found}
  def get_worker_metadata(worker_id) do
    with {:ok, {_, meta}} <- fetch_worker(worker_id), do: {:ok, meta}
  end

  @doc "The worker id registered by `pid`: `{:ok, id}` or `:error`."
  @spec get_worker_id_by_pid(pid()) :: {:ok, String.t()} | :error
  def get_worker_id_by_pid(pid) do
    case Registry.keys(__MODULE__, pid) do
      [id | _] -> {:ok, id}
      [] -> :error
    end
  end

  @doc "Ids of every registered worker, sorted."
  @spec list_workers() :: [String.t()]
  def list_workers do
    Registry.select(__MODULE__, [{{:"$1", :_, :_}, [], [:"$1"]}]) |> Enum.sort()
  end

  @doc "Number of registered workers."
  @spec worker_count() :: non_neg_integer()
  def worker_count, do: Registry.count(__MODULE__)

  @doc "Is `worker_id` registered?"
  @spec worker_exists?(String.t()) :: boolean()
  def worker_exists?(worker_id), do: match?({:ok, _}, fetch_worker(worker_id))
end
