defmodule Snakepit.ETSOwner do
  @moduledoc """
  Long-lived owner of Snakepit's shared ETS tables, so that a table never
  dies with the short-lived process that happened to touch it first.

  Started first in the application's tree, whether or not pooling is on.
  """
  use GenServer

  # name => ETS options
  @tables %{
    snakepit_telemetry_handlers: [:bag, :public, :named_table, read_concurrency: true],
    snakepit_worker_taints: [:set, :public, :named_table, read_concurrency: true],
    snakepit_worker_lifecycle: [:set, :public, :named_table, write_concurrency: true],
    snakepit_zero_copy_handles: [:set, :public, :named_table, read_concurrency: true],
    snakepit_worker_exits: [:set, :public, :named_table],
    snakepit_cluster_sessions: [:set, :public, :named_table, read_concurrency: true],
    snakepit_cluster_in_flight: [:set, :public, :named_table, write_concurrency: true],
    snakepit_telemetry_streams: [:set, :public, :named_table]
  }

  @type table_name ::
          :snakepit_telemetry_handlers
          | :snakepit_worker_taints
          | :snakepit_worker_lifecycle
          | :snakepit_zero_copy_handles
          | :snakepit_worker_exits
          | :snakepit_cluster_sessions
          | :snakepit_cluster_in_flight
          | :snakepit_telemetry_streams

  @doc false
  def start_link(_opts), do: GenServer.start_link(__MODULE__, :ok, name: __MODULE__)

  @doc """
  Makes sure `table` exists and returns its name. Raises `ArgumentError`
  for an unknown table and `RuntimeError` when Snakepit is not started.
  """
  @spec ensure_table(table_name()) :: atom()
  def ensure_table(table) do
    unless Map.has_key?(@tables, table),
      do: raise(ArgumentError, "unknown ETS table #{inspect(table)}")

    case :ets.whereis(table) do
      :undefined ->
        if Process.whereis(__MODULE__) == nil,
          do: raise("Snakepit is not started: cannot create ETS table #{inspect(table)}")

        GenServer.call(__MODULE__, {:ensure, table})

      _ref ->
        table
    end
  end

  @impl true
  def init(:ok) do
    for {name, opts} <- @tables, :ets.whereis(name) == :undefined, do: :ets.new(name, opts)
    {:ok, nil}
  end

  @impl true
  def handle_call({:ensure, table}, _from, state) do
    if :ets.whereis(table) == :undefined, do: :ets.new(table, @tables[table])
    {:reply, table, state}
  end
end
