defmodule Snakepit.Pool.Tree do
  @moduledoc """
  One pool as a subtree of a host app's supervision tree: what
  `{Snakepit.Pool, name: :ml, pool_size: 2, adapter_args: [...]}` starts.
  It takes every per-pool key (`Snakepit.Config`), has its own worker
  supervisor and pool process (`:one_for_all`, as the application's pools),
  and registers its name in `Snakepit.Pool.Names`, so `Snakepit.execute(...,
  pool: :ml)` reaches it. Stopping it (its supervisor stopping, or
  `stop_supervised/1` in a test) stops its workers and their Python
  processes. Needs the `:snakepit` application started (a dependency is);
  `pooling_enabled: false` keeps the application from starting pools of
  its own.
  """
  use Supervisor

  @doc false
  def start_link(opts) do
    with {:ok, config} <- config(opts) do
      Supervisor.start_link(__MODULE__, config)
    end
  end

  @impl true
  def init(config) do
    workers = {:via, Registry, {Snakepit.Pool.Names, {:workers, config.name}}}

    children = [
      {Snakepit.Pool.WorkerSupervisor, name: workers},
      %{
        id: Snakepit.Pool.Server,
        start:
          {GenServer, :start_link,
           [Snakepit.Pool.Server, [pools: [config], worker_supervisor: workers]]}
      }
    ]

    Supervisor.init(children, strategy: :one_for_all)
  end

  defp config(opts) do
    cond do
      not Keyword.keyword?(opts) ->
        {:error,
         {:invalid_config, "a pool's options must be a keyword list, got: #{inspect(opts)}"}}

      Process.whereis(Snakepit.Pool.Names) == nil ->
        {:error,
         {:not_started,
          "the :snakepit application is not running: start it before pools of your own " <>
            "(as a dependency it starts first)"}}

      (name = opts[:name]) && Snakepit.Pool.Names.whereis(name) ->
        {:error,
         {:name_taken,
          "a pool named #{inspect(name)} is already running (in " <>
            "#{inspect(Snakepit.Pool.Names.whereis(name))})"}}

      true ->
        case Snakepit.Config.normalize_all([Map.new(opts)]) do
          {:ok, [config]} -> {:ok, config}
          {:error, _} = error -> error
        end
    end
  end
end
