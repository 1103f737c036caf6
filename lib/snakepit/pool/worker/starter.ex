defmodule Snakepit.Pool.Worker.Starter do
  @moduledoc """
  A supervisor of exactly one `Snakepit.GRPCWorker`.

  It restarts the worker when its Python process dies, so the pool never
  manages restarts itself. A worker that fails to *start* exits with
  `{:shutdown, _}` and, being `:transient`, is not restarted in a loop; the
  pool then stops this starter.
  """
  use Supervisor

  @doc false
  def start_link(args) do
    Supervisor.start_link(__MODULE__, args, name: via_name(args.id))
  end

  @doc false
  def child_spec(args) do
    %{
      id: {__MODULE__, args.id},
      start: {__MODULE__, :start_link, [args]},
      type: :supervisor,
      restart: :temporary,
      shutdown: :infinity
    }
  end

  @doc "The via tuple naming the starter of `worker_id`."
  @spec via_name(String.t()) :: {:via, Registry, {atom(), String.t()}}
  def via_name(worker_id), do: {:via, Registry, {Snakepit.Pool.Worker.StarterRegistry, worker_id}}

  @doc "The starter of `worker_id`, if running."
  @spec whereis(String.t()) :: pid() | nil
  def whereis(worker_id), do: GenServer.whereis(via_name(worker_id))

  @impl true
  def init(args) do
    worker = %{
      id: :worker,
      start: {Map.get(args, :worker_module, Snakepit.GRPCWorker), :start_link, [args]},
      restart: :transient,
      shutdown: Snakepit.GRPCWorker.supervisor_shutdown_timeout()
    }

    # A crash-looping Python process gives up (by default after 10 restarts
    # a minute); the pool sees the starter go and the worker stays out of
    # rotation.
    Supervisor.init([worker],
      strategy: :one_for_one,
      max_restarts: Snakepit.Defaults.worker_starter_max_restarts(),
      max_seconds: Snakepit.Defaults.worker_starter_max_seconds()
    )
  end
end
