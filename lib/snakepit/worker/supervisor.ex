defmodule Snakepit.Pool.WorkerSupervisor do
  @moduledoc """
  DynamicSupervisor of every worker: one `Snakepit.Pool.Worker.Starter` per
  worker, which in turn supervises the worker (`Snakepit.GRPCWorker`) that
  owns the Python process and restarts it when that process dies.
  """
  use DynamicSupervisor

  alias Snakepit.Pool.Worker.Starter

  @doc false
  # `name:` for a pool in a host's own tree (see Snakepit.Pool.Tree); the
  # application's is registered under this module's name.
  def start_link(opts \\ []),
    do: DynamicSupervisor.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))

  @impl true
  def init(_opts) do
    DynamicSupervisor.init(
      strategy: :one_for_one,
      max_restarts: Snakepit.Defaults.worker_supervisor_max_restarts(),
      max_seconds: Snakepit.Defaults.worker_supervisor_max_seconds()
    )
  end

  @doc """
  Starts the worker `worker_id` (through its starter). `worker_config` is
  the pool's normalized config; it may carry `:pool_pid`, the pool process
  to notify (default: the `Snakepit.Pool` process), and
  `:worker_supervisor`, where to start it (default: the application's).
  Returns the starter.
  """
  @spec start_worker(String.t(), module(), module() | nil, atom() | nil, map()) ::
          DynamicSupervisor.on_start_child()
  def start_worker(
        worker_id,
        worker_module \\ Snakepit.GRPCWorker,
        adapter_module \\ nil,
        pool_name \\ nil,
        worker_config \\ %{}
      ) do
    config =
      worker_config
      |> Snakepit.Config.normalize_pool_config()
      |> then(&if(adapter_module, do: Map.put(&1, :adapter_module, adapter_module), else: &1))

    args = %{
      id: worker_id,
      worker_module: worker_module,
      pool_name: pool_name || config.name,
      pool_pid: Map.get(worker_config, :pool_pid) || Process.whereis(Snakepit.Pool),
      # Child specs may be printed by supervisors: no secrets in them.
      config: Snakepit.Redact.seal(config)
    }

    supervisor = Map.get(worker_config, :worker_supervisor) || __MODULE__
    DynamicSupervisor.start_child(supervisor, {Starter, args})
  end

  @doc "Stops a worker starter (and so its worker) gracefully."
  @spec stop_worker(pid()) :: :ok | {:error, :not_found}
  def stop_worker(starter) when is_pid(starter) do
    # Its own supervisor: the application's, or a host-started pool's.
    case Process.info(starter, :parent) do
      {:parent, parent} when is_pid(parent) -> DynamicSupervisor.terminate_child(parent, starter)
      _ -> DynamicSupervisor.terminate_child(__MODULE__, starter)
    end
  end

  @doc "Stops the worker with id `worker_id`. `:ok` also when it is not running."
  @spec stop_worker_by_id(String.t()) :: :ok
  def stop_worker_by_id(worker_id) do
    case Starter.whereis(worker_id) do
      nil -> :ok
      starter -> stop_worker(starter) |> then(fn _ -> :ok end)
    end
  end

  @doc "Restarts the worker `worker_id`: its Python process is stopped and a fresh one started."
  @spec restart_worker(String.t()) :: {:ok, pid()} | {:error, term()}
  def restart_worker(worker_id) do
    case Starter.whereis(worker_id) do
      nil -> {:error, :not_found}
      starter -> Starter.restart_worker(starter)
    end
  end

  @doc "Pids of the running worker starters."
  @spec list_workers() :: [pid()]
  def list_workers do
    for {_, pid, _, _} <- DynamicSupervisor.which_children(__MODULE__), is_pid(pid), do: pid
  end

  @doc "Number of running worker starters."
  @spec worker_count() :: non_neg_integer()
  def worker_count, do: DynamicSupervisor.count_children(__MODULE__).active
end
