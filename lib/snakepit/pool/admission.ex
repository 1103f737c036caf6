defmodule Snakepit.Pool.Admission do
  @moduledoc """
  Which waiting calls can still finish: the pool's queue discipline, as
  pure functions over the pool's run-time estimates.

  A call that reaches its worker after its budget is spent is cancelled
  mid-run: the worker's time is lost and its caller fails anyway. Under a
  standing queue, first-in-first-out hands workers almost only such calls
  and goodput collapses (at 16 callers of a 50 ms tool with `timeout: 300`
  on two workers: from 40 to 1.7 calls/s). The `:deadline` discipline
  spends worker time only on calls that can still finish:

    * **at arrival** a call that would have to queue is refused at once
      when the wait ahead of it (the calls queued before it, spread over
      the pool's slots, each taking the pool's typical run time) plus its
      own command's typical run time exceed its remaining budget;
    * **while it waits**, it is refused when its remaining budget falls
      below its command's run time (its timer fires then, not at its
      deadline);
    * **at dispatch** a call whose remaining budget is below its
      command's run time is refused instead of being handed a worker.

  Refusals are `{:error, %Snakepit.Error{category: :pool, details:
  %{reason: :overloaded, retry_after_ms: n}}}` and never reach a worker.
  Most are made at arrival, in microseconds, so callers learn fast and
  the queue holds only calls that will be served in time: the workers stay
  busy with calls that finish, whatever the load. Calls with no deadline,
  and commands with no run time yet observed, are never refused by
  prediction.

  Run times are moving averages (each new sample weighs 1/5), per command
  and for the whole pool, observed when a call checks its slot back in
  (cancelled calls are not samples).

  `:fifo` keeps the older behaviour: a call waits up to its queue timeout
  or its deadline, and is dispatched whatever remains of its budget.

  Why not CoDel with adaptive LIFO: it holds goodput by bounding queue
  delay to a fixed target, which either sheds calls that had budget to
  spare (a target below the budget) or lets doomed ones through (above
  it); every Snakepit call carries its own deadline, so the pool can ask
  the exact question instead.
  """

  @disciplines [:deadline, :fifo]
  # Each new run-time sample weighs 1/@weight in the moving average.
  @weight 5

  defstruct discipline: :deadline, by_command: %{}, pool: nil, shed: 0

  @type t :: %__MODULE__{
          discipline: :deadline | :fifo,
          by_command: %{optional(String.t()) => float()},
          pool: float() | nil,
          shed: non_neg_integer()
        }

  @doc "The disciplines a pool's `queue: [discipline: ...]` may name."
  @spec disciplines() :: [atom()]
  def disciplines, do: @disciplines

  @doc "Admission for a pool configured with `queue` (keyword list or map)."
  @spec new(keyword() | map() | nil) :: t()
  def new(queue) do
    discipline =
      case queue do
        nil -> :deadline
        queue -> Access.get(Map.new(queue), :discipline, :deadline)
      end

    %__MODULE__{discipline: discipline}
  end

  @doc "Records that a call of `command` ran `run_ms`."
  @spec observe(t(), String.t() | nil, number()) :: t()
  def observe(adm, command, run_ms) when is_number(run_ms) and run_ms >= 0 do
    by_command =
      if is_binary(command),
        do: Map.update(adm.by_command, command, run_ms * 1.0, &average(&1, run_ms)),
        else: adm.by_command

    %{adm | by_command: by_command, pool: average(adm.pool, run_ms)}
  end

  def observe(adm, _command, _run_ms), do: adm

  defp average(nil, sample), do: sample * 1.0
  defp average(avg, sample), do: avg + (sample - avg) / @weight

  @doc "The typical run time of `command` (else the pool's), in ms; `nil` before any sample."
  @spec estimate(t(), String.t() | nil) :: float() | nil
  def estimate(adm, command), do: Map.get(adm.by_command, command) || adm.pool

  @doc """
  Whether a call that must queue behind `ahead` others, on a pool of
  `slots` slots, can still finish in time: `:ok`, or `{:shed,
  retry_after_ms}`.
  """
  @spec admit(t(), map(), non_neg_integer(), pos_integer(), integer()) ::
          :ok | {:shed, non_neg_integer()}
  def admit(%{discipline: :fifo}, _request, _ahead, _slots, _now), do: :ok

  def admit(adm, request, ahead, slots, now) do
    with own when own != nil <- own(adm, request),
         remaining when remaining != :infinity <- remaining(request, now) do
      wait = (ahead / max(slots, 1) + 0.5) * (adm.pool || own)
      if wait + own > remaining, do: {:shed, round(wait)}, else: :ok
    else
      _ -> :ok
    end
  end

  @doc "Whether a call about to be handed a worker can still finish in time."
  @spec viable?(t(), map(), integer()) :: boolean()
  def viable?(%{discipline: :fifo}, _request, _now), do: true

  def viable?(adm, request, now) do
    case {own(adm, request), remaining(request, now)} do
      {nil, _} -> true
      {_, :infinity} -> true
      {own, remaining} -> remaining >= own
    end
  end

  @doc """
  How long (ms from `now`) a queued call may wait before it can no longer
  finish in time (`:infinity` when that cannot be told).
  """
  @spec patience(t(), map(), integer()) :: timeout()
  def patience(%{discipline: :fifo}, _request, _now), do: :infinity

  def patience(adm, request, now) do
    case {own(adm, request), remaining(request, now)} do
      {nil, _} -> :infinity
      {_, :infinity} -> :infinity
      {own, remaining} -> max(remaining - ceil(own), 0)
    end
  end

  @doc """
  How long (ms) to hold the refusal of a call refused at arrival: a twentieth
  of its remaining budget, at most `retry_after_ms`. A caller that calls
  again at once (a closed loop) then comes back at most twenty times per
  budget instead of spinning the VM's schedulers, and still hears well
  before its deadline.
  """
  @spec refusal_delay(map(), integer(), non_neg_integer()) :: non_neg_integer()
  def refusal_delay(request, now, retry_after_ms) do
    case remaining(request, now) do
      :infinity -> 0
      remaining -> max(min(div(remaining, 20), retry_after_ms), 0)
    end
  end

  @doc "Counts a refused call."
  @spec shed(t()) :: t()
  def shed(adm), do: %{adm | shed: adm.shed + 1}

  # The call's own command's run time: only what was observed of it (a
  # command that never ran is never refused by prediction).
  defp own(adm, request), do: Map.get(adm.by_command, Map.get(request, :command))

  defp remaining(request, now) do
    case Map.get(request, :deadline, :infinity) do
      :infinity -> :infinity
      deadline -> deadline - now
    end
  end
end
