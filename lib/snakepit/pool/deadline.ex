defmodule Snakepit.Pool.Deadline do
  @moduledoc """
  A call's time budget as pure arithmetic on absolute deadlines
  (`System.monotonic_time(:millisecond)`, or `:infinity`).

  A call has one total budget: `:timeout` (ms) or an absolute
  `:deadline_ms`, whichever ends first. Out of it the queue wait is capped
  (`queue_timeout/2`), and the call to Python gets what is left minus the
  margins of `Snakepit.Defaults.rpc_timeout/1` (`rpc_deadline/1`), so the
  inner timeout always fires before the caller's and the caller gets a
  structured error, never an exit.
  """

  alias Snakepit.Defaults

  @type t :: integer() | :infinity

  @doc "Now, on the deadlines' clock."
  @spec now() :: integer()
  def now, do: :erlang.monotonic_time(:millisecond)

  @doc """
  The total budget of a call of `call_type` (`:execute`, `:execute_stream`
  or `:queue`): `opts[:timeout]` when given, else the configured default
  (`Snakepit.Pool.get_default_timeout_for_call/3`).

      iex> Snakepit.Pool.Deadline.total(:execute, timeout: 45_000)
      45_000
  """
  @spec total(:execute | :execute_stream | :queue, keyword()) :: timeout()
  def total(call_type, opts) do
    case Keyword.get(opts, :timeout) do
      nil -> default_total(call_type)
      timeout -> timeout
    end
  end

  defp default_total(:execute), do: Defaults.pool_request_timeout()
  defp default_total(:execute_stream), do: Defaults.pool_streaming_timeout()
  defp default_total(:queue), do: Defaults.pool_queue_timeout()

  @doc """
  The deadline of a call with total budget `total` (ms or `:infinity`) and
  the options' `:deadline_ms`, whichever is earlier.

      iex> Snakepit.Pool.Deadline.of([], :infinity)
      :infinity
      iex> Snakepit.Pool.Deadline.of([deadline_ms: 5], :infinity)
      5
  """
  @spec of(keyword(), timeout()) :: t()
  def of(opts, total) do
    from_timeout = if total == :infinity, do: :infinity, else: now() + total

    case Keyword.get(opts, :deadline_ms) do
      nil -> from_timeout
      :infinity -> from_timeout
      given -> earliest(given, from_timeout)
    end
  end

  @doc """
  Milliseconds left until `deadline`, never negative.

      iex> Snakepit.Pool.Deadline.remaining(:infinity)
      :infinity
      iex> Snakepit.Pool.Deadline.remaining(Snakepit.Pool.Deadline.now() - 10)
      0
  """
  @spec remaining(t()) :: non_neg_integer() | :infinity
  def remaining(:infinity), do: :infinity
  def remaining(deadline), do: max(deadline - now(), 0)

  @doc "The deadline of the call to Python: `Snakepit.Defaults.rpc_timeout/1` of what is left."
  @spec rpc_deadline(t()) :: t()
  def rpc_deadline(:infinity), do: :infinity
  def rpc_deadline(deadline), do: now() + Defaults.rpc_timeout(remaining(deadline))

  @doc """
  How long (ms) a request may wait in a queue whose own budget is
  `configured`: that budget, capped by what is left until `deadline`.

      iex> Snakepit.Pool.Deadline.queue_timeout(:infinity, 10_000)
      10_000
  """
  @spec queue_timeout(t(), timeout()) :: timeout()
  def queue_timeout(deadline, configured), do: earliest(configured, remaining(deadline))

  @doc """
  The earlier of two timeouts or deadlines (`:infinity` is latest).

      iex> Snakepit.Pool.Deadline.earliest(:infinity, 3)
      3
      iex> Snakepit.Pool.Deadline.earliest(4, 3)
      3
  """
  @spec earliest(timeout(), timeout()) :: timeout()
  def earliest(:infinity, b), do: b
  def earliest(a, :infinity), do: a
  def earliest(a, b), do: min(a, b)
end
