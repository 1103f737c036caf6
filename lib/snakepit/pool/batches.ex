defmodule Snakepit.Pool.Batches do
  @moduledoc """
  The batches a `Snakepit.Pool.Batcher` is gathering, as pure functions
  (see `Snakepit.Pool.Batching` for the whole story).

  Calls of one batched tool in one pool (a *key*, `{pool, tool}`) join the
  key's *open* batch. A batch is ready to leave when it holds
  `max_batch_size` items (`:full`) or when its first item has waited
  `max_batch_delay_ms` (`:delay`; at once with a delay of 0): the batcher
  then starts a runner, which asks the pool for a worker slot. Until the
  runner has one, a batch that is not full keeps taking items, so under
  load batches grow by themselves instead of queueing small ones. When
  the runner has its worker it takes the batch (`take/3`): the batch
  leaves, without the items whose deadline passed meanwhile.

  An item is `{tag, args, binary_parameters, idempotent, deadline}`; only
  its deadline (monotonic ms or `:infinity`) matters here.

  Actions for the batcher: `{:arm, id, delay_ms}` (a timer for the
  batch's delay) and `{:run, id, key, deadline}` (start its runner, which
  leases a slot until `deadline`, the latest of the batch's deadlines so
  far).
  """

  defstruct batches: %{}, open: %{}, next: 0

  @type key :: {atom(), String.t()}
  @type item :: {term(), map(), map() | nil, boolean(), integer() | :infinity}
  @type action ::
          {:arm, non_neg_integer(), non_neg_integer()}
          | {:run, non_neg_integer(), key(), integer() | :infinity}
  @type batch :: %{
          key: key(),
          items: [item()],
          n: non_neg_integer(),
          max: pos_integer(),
          first_at: integer(),
          running: boolean(),
          reason: :full | :delay | nil,
          deadline: integer() | :infinity | nil
        }
  @type t :: %__MODULE__{
          batches: %{optional(non_neg_integer()) => batch()},
          open: %{optional(key()) => non_neg_integer()},
          next: non_neg_integer()
        }

  @doc "No batches."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc """
  Adds `item` to the open batch of `key` (opening one when there is none),
  under `config` (`%{max_batch_size:, max_batch_delay_ms:}`). `now` is
  any monotonic clock, kept as the batch's start.
  """
  @spec add(t(), key(), map(), item(), integer()) :: {[action()], t()}
  def add(state, key, config, item, now) do
    {id, new?, state} = open_batch(state, key, config, now)
    batch = Map.fetch!(state.batches, id)

    batch = %{
      batch
      | items: [item | batch.items],
        n: batch.n + 1,
        deadline: latest(batch.deadline, elem(item, 4))
    }

    cond do
      batch.n >= batch.max ->
        state = %{state | open: Map.delete(state.open, key)}
        start(state, id, batch, :full)

      new? and config.max_batch_delay_ms == 0 ->
        start(state, id, batch, :delay)

      new? ->
        {[{:arm, id, config.max_batch_delay_ms}], put(state, id, batch)}

      true ->
        {[], put(state, id, batch)}
    end
  end

  @doc "The delay of batch `id` is up: its runner starts (unless it has one)."
  @spec due(t(), non_neg_integer()) :: {[action()], t()}
  def due(state, id) do
    case state.batches do
      %{^id => %{running: false} = batch} -> start(state, id, batch, :delay)
      _ -> {[], state}
    end
  end

  @doc """
  Batch `id` leaves (its runner has a worker): `{:ok, batch, live,
  expired, state}` with the items in arrival order, split by whether their
  deadline passed by `now_ms` (monotonic ms); `:error` when there is no
  such batch.
  """
  @spec take(t(), non_neg_integer(), integer()) ::
          {:ok, batch(), [item()], [item()], t()} | :error
  def take(state, id, now_ms) do
    case Map.pop(state.batches, id) do
      {nil, _} ->
        :error

      {batch, batches} ->
        key = batch.key

        open =
          case state.open do
            %{^key => ^id} -> Map.delete(state.open, key)
            open -> open
          end

        {live, expired} =
          batch.items
          |> Enum.reverse()
          |> Enum.split_with(fn item -> alive?(elem(item, 4), now_ms) end)

        {:ok, batch, live, expired, %{state | batches: batches, open: open}}
    end
  end

  @doc "Batches being gathered (for stats and tests)."
  @spec size(t()) :: non_neg_integer()
  def size(state), do: map_size(state.batches)

  defp open_batch(state, key, config, now) do
    case state.open do
      %{^key => id} ->
        {id, false, state}

      _ ->
        id = state.next

        batch = %{
          key: key,
          items: [],
          n: 0,
          max: config.max_batch_size,
          first_at: now,
          running: false,
          reason: nil,
          deadline: nil
        }

        {id, true, %{state | next: id + 1, open: Map.put(state.open, key, id)} |> put(id, batch)}
    end
  end

  defp start(state, id, %{running: true} = batch, _reason), do: {[], put(state, id, batch)}

  defp start(state, id, batch, reason) do
    batch = %{batch | running: true, reason: reason}
    {[{:run, id, batch.key, batch.deadline}], put(state, id, batch)}
  end

  defp put(state, id, batch), do: %{state | batches: Map.put(state.batches, id, batch)}

  defp latest(nil, deadline), do: deadline
  defp latest(:infinity, _deadline), do: :infinity
  defp latest(_current, :infinity), do: :infinity
  defp latest(current, deadline), do: max(current, deadline)

  defp alive?(:infinity, _now), do: true
  defp alive?(deadline, now), do: deadline > now
end
