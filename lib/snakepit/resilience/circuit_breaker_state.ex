defmodule Snakepit.CircuitBreaker.State do
  @moduledoc """
  The circuit breaker's state machine as pure functions.

  `Snakepit.CircuitBreaker` is a thin GenServer over this module; the
  functions here take the current time (monotonic milliseconds) as an
  argument so every transition can be tested without processes or clocks.

  Transitions:

    * `:closed` → `:open` when `failure_count` (consecutive failures) reaches
      `failure_threshold`; a success resets `failure_count` to 0
    * `:open` → `:half_open` once `reset_timeout_ms` have passed since the
      circuit opened (evaluated lazily by every function that takes `now`)
    * `:half_open` admits at most `half_open_max_calls` calls; the first
      success closes the circuit, any failure opens it again and restarts
      the reset timeout
    * `reset/1` closes the circuit from any state
  """

  import Snakepit.Resilience.Options, only: [pos_int!: 3]

  @type circuit :: :closed | :open | :half_open

  @type t :: %__MODULE__{
          state: circuit(),
          failure_count: non_neg_integer(),
          success_count: non_neg_integer(),
          failure_threshold: pos_integer(),
          reset_timeout_ms: pos_integer(),
          half_open_max_calls: pos_integer(),
          half_open_calls: non_neg_integer(),
          last_failure_time: integer() | nil,
          opened_at: integer() | nil,
          name: atom() | nil,
          total_calls: non_neg_integer(),
          rejected_calls: non_neg_integer()
        }

  defstruct state: :closed,
            failure_count: 0,
            success_count: 0,
            failure_threshold: 5,
            reset_timeout_ms: 30_000,
            half_open_max_calls: 1,
            half_open_calls: 0,
            last_failure_time: nil,
            opened_at: nil,
            name: nil,
            total_calls: 0,
            rejected_calls: 0

  @doc """
  Builds a closed circuit from options (`:failure_threshold`,
  `:reset_timeout_ms`, `:half_open_max_calls`, `:name`).

  Raises `ArgumentError` naming the option when a value is not a positive
  integer (or, for `:name`, not an atom).
  """
  @spec new(keyword()) :: t()
  def new(opts \\ []) do
    %__MODULE__{
      failure_threshold:
        pos_int!(opts, :failure_threshold, Snakepit.Defaults.circuit_breaker_failure_threshold()),
      reset_timeout_ms:
        pos_int!(opts, :reset_timeout_ms, Snakepit.Defaults.circuit_breaker_reset_timeout_ms()),
      half_open_max_calls:
        pos_int!(
          opts,
          :half_open_max_calls,
          Snakepit.Defaults.circuit_breaker_half_open_max_calls()
        ),
      name: name!(opts)
    }
  end

  @doc "Applies the lazy `:open` → `:half_open` transition when the reset timeout has passed."
  @spec refresh(t(), integer()) :: t()
  def refresh(%__MODULE__{state: :open, opened_at: opened_at} = s, now)
      when now - opened_at >= s.reset_timeout_ms do
    %{s | state: :half_open, half_open_calls: 0}
  end

  def refresh(%__MODULE__{} = s, _now), do: s

  @doc "Returns the circuit state at `now` together with the refreshed struct."
  @spec status(t(), integer()) :: {circuit(), t()}
  def status(%__MODULE__{} = s, now) do
    s = refresh(s, now)
    {s.state, s}
  end

  @doc """
  Returns whether a call would be admitted at `now`, without taking a
  half-open slot.
  """
  @spec allow?(t(), integer()) :: {boolean(), t()}
  def allow?(%__MODULE__{} = s, now) do
    s = refresh(s, now)

    allowed =
      case s.state do
        :closed -> true
        :open -> false
        :half_open -> s.half_open_calls < s.half_open_max_calls
      end

    {allowed, s}
  end

  @doc """
  Admits or rejects a call at `now`. In `:half_open` an admitted call takes
  one of the `half_open_max_calls` slots.
  """
  @spec acquire(t(), integer()) :: {:ok | :rejected, t()}
  def acquire(%__MODULE__{} = s, now) do
    s = refresh(s, now)

    case s.state do
      :closed ->
        {:ok, %{s | total_calls: s.total_calls + 1}}

      :half_open when s.half_open_calls < s.half_open_max_calls ->
        {:ok, %{s | total_calls: s.total_calls + 1, half_open_calls: s.half_open_calls + 1}}

      _open_or_full ->
        {:rejected, %{s | rejected_calls: s.rejected_calls + 1}}
    end
  end

  @doc "Records a successful call at `now`."
  @spec success(t(), integer()) :: t()
  def success(%__MODULE__{} = s, now) do
    s = refresh(s, now)
    s = %{s | success_count: s.success_count + 1}

    case s.state do
      :closed -> %{s | failure_count: 0}
      :half_open -> close(s)
      :open -> s
    end
  end

  @doc "Records a failed call at `now`."
  @spec failure(t(), integer()) :: t()
  def failure(%__MODULE__{} = s, now) do
    s = refresh(s, now)
    s = %{s | failure_count: s.failure_count + 1, last_failure_time: now}

    case s.state do
      :closed when s.failure_count >= s.failure_threshold -> open(s, now)
      :closed -> s
      :half_open -> open(s, now)
      :open -> s
    end
  end

  @doc "Closes the circuit and clears its counters (lifetime totals are kept)."
  @spec reset(t()) :: t()
  def reset(%__MODULE__{} = s) do
    %{close(s) | success_count: 0, last_failure_time: nil}
  end

  @doc "Returns a statistics map."
  @spec stats(t(), integer()) :: {map(), t()}
  def stats(%__MODULE__{} = s, now) do
    s = refresh(s, now)

    stats =
      s
      |> Map.from_struct()
      |> Map.drop([:opened_at])

    {stats, s}
  end

  defp open(s, now), do: %{s | state: :open, opened_at: now, half_open_calls: 0}

  defp close(s), do: %{s | state: :closed, failure_count: 0, half_open_calls: 0, opened_at: nil}

  defp name!(opts) do
    case Keyword.get(opts, :name) do
      name when is_atom(name) -> name
      # {:global, _} / {:via, _, _} names are fine for registration; keep no atom for telemetry.
      {:global, _} -> nil
      {:via, _, _} -> nil
      other -> raise ArgumentError, "invalid :name option: #{inspect(other)}"
    end
  end
end
