defmodule Snakepit.Pool.Scaling do
  @moduledoc """
  When an elastic pool grows and shrinks, as pure functions. An elastic
  pool (`min_workers < max_workers`) keeps a size in that range;
  `Snakepit.Pool.Slots` starts and drains workers to match it.

  ## Growing: when calls wait

  The pool grows when calls wait for a worker and a new worker would still
  be of use once it is ready, that is when either

    * the wait ahead of the newest queued call is longer than a worker
      typically takes to start (measured on the pool's own starts after
      its first batch, which pays for the fork server's start too). The
      wait is told by the pool's run-time estimate
      (`Snakepit.Pool.Admission`, the same numbers the `:deadline`
      discipline uses): `(queued / ready slots + 0.5) * typical run
      time`; or
    * calls have been waiting, without the queue emptying once, for
      longer than a worker takes to start: a standing queue, which the
      first rule misses when calls keep arriving as fast as they leave.

  It then grows at once to as many workers as would serve every busy and
  queued call (`ceil((busy + queued) / capacity)`), capped at
  `max_workers`. Before any call or start was measured, waiting calls are
  reason enough.

  Why calls waiting and not utilization: a pool at 100% utilization may
  have exactly the workers it needs or far too few; utilization cannot
  tell, because it saturates. A queued call is unmet demand, measured
  directly, and how long it will wait says whether a new worker can still
  help it: a short blip that clears in less time than a worker takes to
  start does not grow the pool. Queue delay alone (how long the oldest
  call has waited) reacts only after calls have already waited; the
  expected wait reacts when the queue forms. Growing adds slots only:
  queued calls keep their place and go to whichever worker is free first.

  ## Shrinking: what the pool needed within a window

  Every grant records how many slots were busy, every queued call how
  many would have been needed (`Snakepit.Pool.State.demand/2`). Every
  tick (a quarter of `scale_down_after_ms`, between 50 ms and 1 s) the
  pool shrinks to the most it needed in the last `scale_down_after_ms`,
  never below `min_workers`: an idle pool goes back to `min_workers`, a
  lightly loaded one to what its peak took. Shrinking retires workers
  (`victims/3`): a worker drains, finishing its calls in flight, and a
  worker with a strict-affinity session pinned to it is not chosen while
  idle shrinking has others to choose.
  """

  @typedoc "What `grow_to/1` needs to know about a pool now."
  @type load :: %{
          size: pos_integer(),
          max: pos_integer(),
          queued: non_neg_integer(),
          busy: non_neg_integer(),
          capacity: pos_integer(),
          ready_slots: non_neg_integer(),
          run_ms: number() | nil,
          start_ms: number() | nil,
          backlog_ms: non_neg_integer()
        }

  @typedoc "A member the pool may retire."
  @type candidate :: %{
          id: String.t(),
          ready: boolean(),
          load: non_neg_integer(),
          pinned: boolean(),
          slot: non_neg_integer() | nil
        }

  @doc """
  The size an elastic pool should have now that calls wait (its current
  size when it should not grow).

      iex> Snakepit.Pool.Scaling.grow_to(%{size: 1, max: 4, queued: 31, busy: 1, capacity: 1,
      ...>   ready_slots: 1, run_ms: 50, start_ms: 400, backlog_ms: 0})
      4
      iex> Snakepit.Pool.Scaling.grow_to(%{size: 1, max: 4, queued: 2, busy: 1, capacity: 1,
      ...>   ready_slots: 1, run_ms: 50, start_ms: 400, backlog_ms: 0})
      1
  """
  @spec grow_to(load()) :: pos_integer()
  def grow_to(%{queued: 0, size: size}), do: size
  def grow_to(%{size: size, max: max}) when size >= max, do: size

  def grow_to(load) do
    if worth_growing?(load) do
      wanted = ceil((load.busy + load.queued) / max(load.capacity, 1))
      min(load.max, max(load.size, wanted))
    else
      load.size
    end
  end

  # Would a worker started now be ready before the newest queued call
  # gets one anyway?
  defp worth_growing?(%{run_ms: nil}), do: true
  defp worth_growing?(%{start_ms: nil}), do: true
  defp worth_growing?(%{ready_slots: 0}), do: true

  defp worth_growing?(load) do
    load.backlog_ms >= load.start_ms or
      expected_wait(load.queued, load.ready_slots, load.run_ms) > load.start_ms
  end

  @doc """
  How long (ms) the newest of `queued` calls waits on `slots` slots whose
  calls take `run_ms`.

      iex> Snakepit.Pool.Scaling.expected_wait(31, 1, 50)
      1575.0
  """
  @spec expected_wait(non_neg_integer(), pos_integer(), number()) :: float()
  def expected_wait(queued, slots, run_ms), do: (queued / max(slots, 1) + 0.5) * run_ms

  @doc """
  The size to shrink to, given the most slots (`needed`) the pool needed
  within the window: at least `min`, at most `size`.

      iex> Snakepit.Pool.Scaling.shrink_to(4, 1, 0, 1)
      1
      iex> Snakepit.Pool.Scaling.shrink_to(4, 1, 3, 1)
      3
      iex> Snakepit.Pool.Scaling.shrink_to(4, 1, 12, 10)
      2
  """
  @spec shrink_to(pos_integer(), pos_integer(), non_neg_integer(), pos_integer()) ::
          pos_integer()
  def shrink_to(size, min, needed, capacity) do
    needed_workers = ceil(needed / max(capacity, 1))
    size |> min(max(min, needed_workers)) |> max(min)
  end

  @doc """
  Which `n` of `candidates` leave first: members not ready yet (nothing
  runs there), then ready ones without a strict session pinned, idle
  before busy, highest slot index first (so a settled pool keeps the low
  slots, and the devices that go with them). Pinned ones come last, and
  only when `pinned_too?`.
  """
  @spec victims([candidate()], non_neg_integer(), boolean()) :: [String.t()]
  def victims(_candidates, n, _pinned_too?) when n <= 0, do: []

  def victims(candidates, n, pinned_too?) do
    candidates
    |> Enum.filter(&(pinned_too? or not &1.pinned or not &1.ready))
    |> Enum.sort_by(fn c ->
      {c.ready, c.ready and c.pinned, c.load, -(c.slot || 0)}
    end)
    |> Enum.take(n)
    |> Enum.map(& &1.id)
  end

  @doc """
  How often (ms) an elastic pool reconsiders its size.

      iex> Snakepit.Pool.Scaling.tick_ms(60_000)
      1000
      iex> Snakepit.Pool.Scaling.tick_ms(400)
      100
  """
  @spec tick_ms(pos_integer()) :: pos_integer()
  def tick_ms(scale_down_after_ms), do: scale_down_after_ms |> div(4) |> max(50) |> min(1_000)
end
