defmodule Snakepit.Pool.Worker.StarterRegistry do
  @moduledoc """
  The registry of worker starters (`Snakepit.Pool.Worker.Starter`): worker
  id -> the starter that keeps that worker slot alive.

  A starter registers under its worker's id when it starts and stays
  registered across restarts of its worker, so this registry answers
  "which slots exist" while `Snakepit.Pool.Registry` answers "which
  workers are ready now". It is started by `Snakepit.Application`.
  """

  @doc "The child spec of the registry (unique keys, registered as this module)."
  @spec child_spec(keyword()) :: Supervisor.child_spec()
  def child_spec(_opts) do
    %{Registry.child_spec(keys: :unique, name: __MODULE__) | id: __MODULE__}
  end

  @doc """
  The via tuple naming the starter of `worker_id`.

      iex> Snakepit.Pool.Worker.StarterRegistry.via_tuple("worker_123")
      {:via, Registry, {Snakepit.Pool.Worker.StarterRegistry, "worker_123"}}
  """
  @spec via_tuple(String.t()) :: {:via, Registry, {module(), String.t()}}
  def via_tuple(worker_id), do: {:via, Registry, {__MODULE__, worker_id}}

  @doc "The pid of the starter of `worker_id`: `{:ok, pid}` or `{:error, :not_found}`."
  @spec get_starter_pid(String.t()) :: {:ok, pid()} | {:error, :not_found}
  def get_starter_pid(worker_id) do
    case lookup(worker_id) do
      [{pid, _}] -> {:ok, pid}
      [] -> {:error, :not_found}
    end
  end

  @doc "Worker ids of every registered starter, sorted."
  @spec list_starters() :: [String.t()]
  def list_starters do
    if running?(),
      do: Registry.select(__MODULE__, [{{:"$1", :_, :_}, [], [:"$1"]}]) |> Enum.sort(),
      else: []
  end

  @doc "Number of registered starters."
  @spec starter_count() :: non_neg_integer()
  def starter_count, do: if(running?(), do: Registry.count(__MODULE__), else: 0)

  @doc "Is a starter registered for `worker_id`?"
  @spec starter_exists?(String.t()) :: boolean()
  def starter_exists?(worker_id), do: lookup(worker_id) != []

  # Before Snakepit starts (or after it stopped) there are no starters,
  # rather than an ArgumentError; a key that is not a string names none.
  defp lookup(worker_id) when is_binary(worker_id) do
    if running?(), do: Registry.lookup(__MODULE__, worker_id), else: []
  end

  defp lookup(_worker_id), do: []

  defp running?, do: Process.whereis(__MODULE__) != nil
end
