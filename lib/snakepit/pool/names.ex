defmodule Snakepit.Pool.Names do
  @moduledoc """
  Which pool process serves each pool name, wherever it was started: the
  application's `Snakepit.Pool` (the configured pools) or a pool a host app
  put in its own supervision tree (`{Snakepit.Pool, name: :ml, ...}`). A
  name belongs to one process at a time; `Snakepit.execute(..., pool:
  :ml)` finds it here.
  """

  @doc false
  def child_spec(_opts), do: Registry.child_spec(keys: :unique, name: __MODULE__)

  @doc """
  Registers the calling pool process under `name`: `:ok`, or `{:error,
  message}` when another process already serves that name.
  """
  @spec register(atom()) :: :ok | {:error, String.t()}
  def register(name) do
    case Registry.register(__MODULE__, name, nil) do
      {:ok, _} ->
        :ok

      {:error, {:already_registered, pid}} when pid == self() ->
        :ok

      {:error, {:already_registered, pid}} ->
        {:error, "a pool named #{inspect(name)} is already running (in #{inspect(pid)})"}
    end
  end

  @doc false
  # A pool process also registers what its callers need to batch calls
  # (its default pool, its batched-tool table and its batcher), under
  # {:server, pid}: found from the pool process alone.
  @spec register_server(map()) :: :ok
  def register_server(info) do
    {:ok, _} = Registry.register(__MODULE__, {:server, self()}, info)
    :ok
  end

  @doc false
  @spec server_info(pid()) :: map() | nil
  def server_info(pid) do
    case Registry.lookup(__MODULE__, {:server, pid}) do
      [{_, info}] -> info
      [] -> nil
    end
  rescue
    ArgumentError -> nil
  end

  @doc "The pool process serving `name`, or `nil`."
  @spec whereis(atom()) :: pid() | nil
  def whereis(name) do
    case Registry.lookup(__MODULE__, name) do
      [{pid, _}] -> pid
      [] -> nil
    end
  rescue
    # Snakepit is not started.
    ArgumentError -> nil
  end

  @doc "Every pool name served now."
  @spec names() :: [atom()]
  def names do
    Registry.select(__MODULE__, [{{:"$1", :_, :_}, [{:is_atom, :"$1"}], [:"$1"]}])
  rescue
    ArgumentError -> []
  end
end
