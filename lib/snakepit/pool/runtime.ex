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
            timings: nil

  @type t :: %__MODULE__{}

  @doc "The runtime of a pool with (normalized) `config`: every worker pending."
  @spec new(map()) :: t()
  def new(config) do
    {size, delay} =
      if Config.thread_profile?(config),
        do: {config.pool_size, 0},
        else: {config.startup_batch_size, config.startup_batch_delay_ms}

    %__MODULE__{
      profile: Config.get_profile_module(config),
      crash_barrier: CrashBarrier.config(config),
      pending: for(n <- 1..config.pool_size, do: worker_id(config.name, n)),
      next: config.pool_size + 1,
      batch_size: size,
      batch_delay: delay,
      timings: Snakepit.Pool.Timings.new()
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
  def started(rt, id, now), do: %{rt | started_at: Map.put(rt.started_at, id, now)}

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
           retiring: MapSet.put(rt.retiring, id)
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
    {replaced, replacing} = Map.pop(rt.replacing, new_id)
    {replaced, %{rt | replacing: replacing}}
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
        {replaced, %{rt | replacing: replacing, retiring: MapSet.delete(rt.retiring, old_id)}}
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
        started_at: Map.delete(rt.started_at, id)
    }
end
