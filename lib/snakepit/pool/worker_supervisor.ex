defmodule Snakepit.Pool.WorkerSupervisor do
  @moduledoc """
  DynamicSupervisor of every worker: one `Snakepit.Pool.Worker.Starter` per
  worker, which in turn supervises the `Snakepit.GRPCWorker` that owns the
  Python process.
  """
  use DynamicSupervisor

  alias Snakepit.Pool.Worker.Starter

  @doc false
  def start_link(opts \\ []) do
    DynamicSupervisor.start_link(__MODULE__, :ok, name: Keyword.get(opts, :name, __MODULE__))
  end

  @impl true
  def init(:ok), do: DynamicSupervisor.init(strategy: :one_for_one)

  @doc "Starts a worker (its starter) described by `args` (`:id`, `:pool_name`, `:pool_pid`, `:config`)."
  @spec start_worker(GenServer.server(), map()) :: DynamicSupervisor.on_start_child()
  def start_worker(supervisor \\ __MODULE__, args) do
    DynamicSupervisor.start_child(supervisor, {Starter, args})
  end

  @doc "Stops the worker with id `worker_id` and its starter. `:ok` also when it is not running."
  @spec stop_worker_by_id(GenServer.server(), String.t()) :: :ok
  def stop_worker_by_id(supervisor \\ __MODULE__, worker_id) do
    case Starter.whereis(worker_id) do
      nil -> :ok
      starter -> stop_worker(supervisor, starter)
    end
  end

  @doc "Stops a worker starter (and so its worker) gracefully."
  @spec stop_worker(GenServer.server(), pid()) :: :ok
  def stop_worker(supervisor \\ __MODULE__, starter) do
    case DynamicSupervisor.terminate_child(supervisor, starter) do
      :ok -> :ok
      {:error, :not_found} -> :ok
    end
  end

  @doc "Number of running worker starters."
  @spec worker_count(GenServer.server()) :: non_neg_integer()
  def worker_count(supervisor \\ __MODULE__),
    do: DynamicSupervisor.count_children(supervisor).active
end
