defmodule Snakepit.Pool.ServerState do
  @moduledoc """
  The state of the pool process (`Snakepit.Pool.Server`), shared by the
  helpers it calls (`Snakepit.Pool.Size`, `Snakepit.Pool.Slots`,
  `Snakepit.Pool.Restart`, `Snakepit.Pool.Leases`), and the accessors they
  write it through.

  One pool process serves one or more pools, by name: each has its
  scheduling state (`Snakepit.Pool.State`) in `pools` and its runtime
  bookkeeping (`Snakepit.Pool.Runtime`) in `runtime`. Besides those it
  keeps the monitors of starters, workers and callers, the calls being
  stopped, the callers of `Snakepit.Pool.await_ready/2` and the file
  watchers of pools that reload.
  """

  alias Snakepit.Pool.{Runtime, State}

  @enforce_keys [:pools, :runtime, :order, :default, :batched]
  defstruct pools: %{},
            runtime: %{},
            # The configured pools, in order; the first is the default.
            order: [],
            default: nil,
            # Where this pool process starts its workers (a pool in a host's
            # own tree has a worker supervisor of its own).
            worker_supervisor: Snakepit.Pool.WorkerSupervisor,
            # Monitors: ref => {pool, worker id} (starters), ref => {pool,
            # worker id, pid} (workers), ref => {pool, lease ref} (callers).
            starters: %{},
            monitors: %{},
            callers: %{},
            # CancelTool calls in flight: ref => %{pool, ref, worker, timer, reply_to}.
            stopping: %{},
            # Callers of await_ready/2 and await_init_complete/2: {from, kind, which}.
            waiters: [],
            # File watchers of pools with reload on: monitor ref => pool name.
            reloaders: %{},
            # The batched tools of each pool ({pool, tool} => settings), read
            # by callers (Snakepit.Pool.Batching).
            batched: nil

  @type name :: atom()
  @type t :: %__MODULE__{
          pools: %{name() => State.t()},
          runtime: %{name() => Runtime.t()},
          order: [name()],
          default: name(),
          worker_supervisor: GenServer.server(),
          starters: map(),
          monitors: map(),
          callers: map(),
          stopping: map(),
          waiters: list(),
          reloaders: map(),
          batched: :ets.tid()
        }

  @doc "The state of a pool process serving the pools of `configs` (normalized)."
  @spec new([map()], :ets.tid(), keyword()) :: t()
  def new([first | _] = configs, batched, opts) do
    %__MODULE__{
      pools: Map.new(configs, &{&1.name, State.new(&1)}),
      runtime: Map.new(configs, &{&1.name, Runtime.new(&1)}),
      order: Enum.map(configs, & &1.name),
      default: first.name,
      worker_supervisor: Keyword.get(opts, :worker_supervisor, Snakepit.Pool.WorkerSupervisor),
      batched: batched
    }
  end

  @doc "Replaces the scheduling state of pool `name`."
  @spec put_pool(t(), name(), State.t()) :: t()
  def put_pool(state, name, pool), do: %{state | pools: Map.put(state.pools, name, pool)}

  @doc "Applies `fun` to the scheduling state of pool `name`."
  @spec update_pool(t(), name(), (State.t() -> State.t())) :: t()
  def update_pool(state, name, fun), do: put_pool(state, name, fun.(state.pools[name]))

  @doc "Replaces the runtime bookkeeping of pool `name`."
  @spec put_runtime(t(), name(), Runtime.t()) :: t()
  def put_runtime(state, name, rt), do: %{state | runtime: Map.put(state.runtime, name, rt)}

  @doc "Applies `fun` to the runtime bookkeeping of pool `name`."
  @spec update_runtime(t(), name(), (Runtime.t() -> Runtime.t())) :: t()
  def update_runtime(state, name, fun), do: put_runtime(state, name, fun.(state.runtime[name]))

  @doc "Forgets the caller monitor `mref` (its request left the pool)."
  @spec forget_caller(t(), reference()) :: t()
  def forget_caller(state, mref), do: %{state | callers: Map.delete(state.callers, mref)}

  @doc "Remembers the caller monitor `mref` of request `ref` to pool `name`."
  @spec watch_caller(t(), reference(), name(), reference()) :: t()
  def watch_caller(state, mref, name, ref),
    do: %{state | callers: Map.put(state.callers, mref, {name, ref})}
end
