defmodule Snakepit.Pool.Runtime do
  @moduledoc """
  A pool's runtime bookkeeping besides scheduling (`Snakepit.Pool.State`),
  as pure functions: startup batches, worker numbering, recycling (the
  replacement in progress and the worker it replaces) and when each worker
  started. `Snakepit.Pool` carries out what they decide (starting workers,
  timers).

  ## Batches

  A process-profile pool starts `startup_batch_size` workers at a time: the
  next batch starts when every worker of the current one is ready or
  failed, or after `startup_batch_delay_ms`, whichever comes first. A
  thread-profile pool starts all its workers at once.

  ## Members and slots

  The pool's `size` is how many workers it keeps; its `members` are the
  workers that count towards it (pending, starting, ready or restarting
  after a crash), not those retiring (draining before they stop) nor a
  replacement still starting. Every worker has a slot index
  (`Snakepit.Worker.SlotEnv`): a replacement takes the index of the worker
  it replaces, a new member the lowest index no live worker holds.
  `min`..`max` is the range the pool may breathe in (`min == max` for a
  fixed pool); `Snakepit.Pool.Scaling` decides when to move in it.
  """

  alias Snakepit.{Config, CrashBarrier}

  defstruct profile: nil,
            crash_barrier: %{},
            pending: [],
            next: 1,
            batch_size: 1,
            batch_delay: 0,
            batch: MapSet.new(),
            batch_timer: nil,
            replacing: %{},
            retiring: MapSet.new(),
            started_at: %{},
            timings: nil,
            members: MapSet.new(),
            slot_of: %{},
            size: 1,
            min: 1,
            max: 1,
            # Workers started by the pool and not yet ready: id => start time.
            starting: %{},
            # The first workers: their starts pay for the fork server's too.
            initial: MapSet.new(),
            # Moving average of how long (ms) a worker takes to be ready.
            start_ms: nil,
            # A restart in progress (Snakepit.Pool.Restart).
            restart: nil

  @type t :: %__MODULE__{}

  @doc "The runtime of a pool with (normalized) `config`: every worker pending."
  @spec new(map()) :: t()
  def new(config) do
    {size, delay} =
      if Config.thread_profile?(config),
        do: {config.pool_size, 0},
        else: {config.startup_batch_size, config.startup_batch_delay_ms}

    ids = for n <- 1..config.pool_size, do: worker_id(config.name, n)

    %__MODULE__{
      profile: Config.get_profile_module(config),
      crash_barrier: CrashBarrier.config(config),
      pending: ids,
      next: config.pool_size + 1,
      batch_size: size,
      batch_delay: delay,
      timings: Snakepit.Pool.Timings.new(),
      members: MapSet.new(ids),
      initial: MapSet.new(ids),
      slot_of: ids |> Enum.with_index() |> Map.new(),
      size: config.pool_size,
      min: Map.get(config, :min_workers, config.pool_size),
      max: Map.get(config, :max_workers, config.pool_size)
    }
  end

  @doc """
  The id of worker number `n` of `pool_name`.

      iex> Snakepit.Pool.Runtime.worker_id(:default, 3)
      "default_worker_3"
  """
  @spec worker_id(atom(), pos_integer()) :: String.t()
  def worker_id(pool_name, n), do: "#{pool_name}_worker_#{n}"

  @doc """
  Takes the next batch: `{ids to start, more_pending?, runtime}`. The
  caller starts the ids and, when more are pending, a timer for the next
  batch (`batch_timer/2`).
  """
  @spec next_batch(t()) :: {[String.t()], boolean(), t()}
  def next_batch(%{pending: []} = rt), do: {[], false, %{rt | batch_timer: nil}}

  def next_batch(rt) do
    {batch, pending} = Enum.split(rt.pending, rt.batch_size)
    {batch, pending != [], %{rt | pending: pending, batch: MapSet.new(batch), batch_timer: nil}}
  end

  @doc "Records the timer of the next batch (nil: none)."
  @spec batch_timer(t(), reference() | nil) :: t()
  def batch_timer(rt, timer), do: %{rt | batch_timer: timer}

  @doc """
  Worker `id` is ready or failed: `{:next_batch, rt}` when that settles the
  current batch and more workers are pending, else `{:wait, rt}`.
  """
  @spec settled(t(), String.t()) :: {:next_batch | :wait, t()}
  def settled(rt, id) do
    in_batch = MapSet.member?(rt.batch, id)
    rt = %{rt | batch: MapSet.delete(rt.batch, id)}

    if in_batch and MapSet.size(rt.batch) == 0 and rt.pending != [],
      do: {:next_batch, rt},
      else: {:wait, rt}
  end

  @doc "Worker `id` was started at `now` (ms)."
  @spec started(t(), String.t(), integer()) :: t()
  def started(rt, id, now),
    do: %{
      rt
      | started_at: Map.put(rt.started_at, id, now),
        starting: Map.put(rt.starting, id, now)
    }

  @doc """
  Worker `id` is ready at `now`: the time it took, when the pool started
  it after its first workers (whose starts include the fork server's),
  feeds the estimate of how long a new worker takes (`start_ms`).
  """
  @spec ready(t(), String.t(), integer()) :: t()
  def ready(rt, id, now) do
    case Map.pop(rt.starting, id) do
      {nil, _} ->
        rt

      {at, starting} ->
        if MapSet.member?(rt.initial, id) do
          %{rt | starting: starting}
        else
          sample = max(now - at, 0)
          avg = if rt.start_ms, do: rt.start_ms + (sample - rt.start_ms) / 4, else: sample * 1.0
          %{rt | starting: starting, start_ms: avg}
        end
    end
  end

  @doc "The slot index of worker `id` (nil when unknown)."
  @spec slot_index(t(), String.t()) :: non_neg_integer() | nil
  def slot_index(rt, id), do: Map.get(rt.slot_of, id)

  @doc "Does worker `id` count towards the pool's size?"
  @spec member?(t(), String.t()) :: boolean()
  def member?(rt, id), do: MapSet.member?(rt.members, id)

  @doc "Sets the size the pool keeps (and, for a fixed pool, its range)."
  @spec resize(t(), pos_integer()) :: t()
  def resize(%{min: same, max: same} = rt, n), do: %{rt | size: n, min: n, max: n}
  def resize(rt, n), do: %{rt | size: n}

  @doc """
  Adds `n` members: `{new ids, rt}`, each with the lowest slot index no
  live worker holds. The caller starts them.
  """
  @spec grow(t(), atom(), non_neg_integer()) :: {[String.t()], t()}
  def grow(rt, _pool_name, 0), do: {[], rt}

  def grow(rt, pool_name, n) do
    Enum.reduce(1..n, {[], rt}, fn _, {ids, rt} ->
      id = worker_id(pool_name, rt.next)

      rt = %{
        rt
        | next: rt.next + 1,
          members: MapSet.put(rt.members, id),
          slot_of: Map.put(rt.slot_of, id, free_index(rt.slot_of))
      }

      {ids ++ [id], rt}
    end)
  end

  defp free_index(slot_of) do
    taken = MapSet.new(Map.values(slot_of))
    Enum.find(Stream.iterate(0, &(&1 + 1)), &(not MapSet.member?(taken, &1)))
  end

  @doc """
  Takes member `id` out of the pool's size: it retires (a ready worker
  drains first; one still pending is dropped from the batches).
  """
  @spec leave(t(), String.t()) :: t()
  def leave(rt, id) do
    %{
      rt
      | members: MapSet.delete(rt.members, id),
        retiring: MapSet.put(rt.retiring, id),
        pending: List.delete(rt.pending, id),
        starting: Map.delete(rt.starting, id)
    }
  end

  @doc "Is worker `id` still waiting for its startup batch?"
  @spec pending?(t(), String.t()) :: boolean()
  def pending?(rt, id), do: id in rt.pending

  @doc "Is a replacement of worker `id` starting (it is being recycled)?"
  @spec recycling?(t(), String.t()) :: boolean()
  def recycling?(rt, id), do: Enum.any?(rt.replacing, fn {_new, {old, _}} -> old == id end)

  @doc "Milliseconds worker `id` has been up at `now` (0 when unknown)."
  @spec uptime(t(), String.t(), integer()) :: non_neg_integer()
  def uptime(rt, id, now), do: now - Map.get(rt.started_at, id, now)

  @doc """
  Begins recycling worker `id`: `{:ok, replacement_id, rt}`, or
  `{:error, :already_recycling}`.
  """
  @spec begin_recycle(t(), atom(), String.t(), atom()) ::
          {:ok, String.t(), t()} | {:error, :already_recycling}
  def begin_recycle(rt, pool_name, id, reason) do
    if MapSet.member?(rt.retiring, id) do
      {:error, :already_recycling}
    else
      new_id = worker_id(pool_name, rt.next)

      {:ok, new_id,
       %{
         rt
         | next: rt.next + 1,
           replacing: Map.put(rt.replacing, new_id, {id, reason}),
           retiring: MapSet.put(rt.retiring, id),
           slot_of: Map.put(rt.slot_of, new_id, Map.get(rt.slot_of, id))
       }}
    end
  end

  @doc "Is `id` a replacement that is still starting?"
  @spec replacement?(t(), String.t()) :: boolean()
  def replacement?(rt, id), do: Map.has_key?(rt.replacing, id)

  @doc """
  Replacement `new_id` is ready: `{{old_id, reason}, rt}` (the old worker
  retires now), or `{nil, rt}` when `new_id` replaces nothing.
  """
  @spec replacement_ready(t(), String.t()) :: {{String.t(), atom()} | nil, t()}
  def replacement_ready(rt, new_id) do
    case Map.pop(rt.replacing, new_id) do
      {nil, _} ->
        {nil, rt}

      {{old_id, _reason} = replaced, replacing} ->
        # The replacement takes the old worker's place in the pool's size
        # (when the old one still had one: it may have been shrunk away).
        members =
          if MapSet.member?(rt.members, old_id),
            do: rt.members |> MapSet.delete(old_id) |> MapSet.put(new_id),
            else: rt.members

        {replaced, %{rt | replacing: replacing, members: members}}
    end
  end

  @doc """
  Replacement `new_id` failed: `{{old_id, reason}, rt}` where the old worker
  keeps serving (it no longer retires), or `{nil, rt}`.
  """
  @spec replacement_failed(t(), String.t()) :: {{String.t(), atom()} | nil, t()}
  def replacement_failed(rt, new_id) do
    case Map.pop(rt.replacing, new_id) do
      {nil, _} ->
        {nil, rt}

      {{old_id, _reason} = replaced, replacing} ->
        # Unless it was shrunk away meanwhile, the old worker stays.
        retiring =
          if MapSet.member?(rt.members, old_id),
            do: MapSet.delete(rt.retiring, old_id),
            else: rt.retiring

        {replaced,
         %{
           rt
           | replacing: replacing,
             retiring: retiring,
             slot_of: Map.delete(rt.slot_of, new_id),
             starting: Map.delete(rt.starting, new_id)
         }}
    end
  end

  @doc "Is worker `id` retiring?"
  @spec retiring?(t(), String.t()) :: boolean()
  def retiring?(rt, id), do: MapSet.member?(rt.retiring, id)

  @doc "Worker `id` was stopped for good: forget it."
  @spec stopped(t(), String.t()) :: t()
  def stopped(rt, id),
    do: %{
      rt
      | retiring: MapSet.delete(rt.retiring, id),
        started_at: Map.delete(rt.started_at, id),
        starting: Map.delete(rt.starting, id),
        members: MapSet.delete(rt.members, id),
        slot_of: Map.delete(rt.slot_of, id)
    }
end
