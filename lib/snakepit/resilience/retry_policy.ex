defmodule Snakepit.RetryPolicy do
  @moduledoc """
  Retry policy with exponential backoff.

  A policy is plain data: how many attempts, how long to wait before each
  retry, whether to add jitter, and which errors are worth retrying. It does
  no waiting itself; `Snakepit.Executor.execute_with_retry/2` applies it.

      policy = Snakepit.RetryPolicy.new(max_attempts: 3, backoff_ms: [100, 200, 400], jitter: true)

      if Snakepit.RetryPolicy.should_retry?(policy, attempt) do
        delay = Snakepit.RetryPolicy.backoff_for_attempt(policy, attempt)
        # wait `delay` ms, then try again
      end

  ## Backoff

  `backoff_for_attempt(policy, n)` is the wait after the `n`-th failed
  attempt. It is the `n`-th entry of `:backoff_ms` when there is one;
  beyond the list it grows exponentially,
  `base_backoff_ms * backoff_multiplier ** (n - 1)` (with the defaults this
  continues the default list: 3200, 6400, ...). The delay never exceeds
  `:max_backoff_ms`. With `jitter: true` it is drawn uniformly from
  `delay ± delay * jitter_factor`, still capped at `:max_backoff_ms`.

  ## Retriable errors

  `:retriable_errors` is a list of reason atoms, or `:all`. An error matches
  when it is the atom itself, `{:error, atom}`, `{:error, {atom, _}}`, or a
  `%Snakepit.Error{}` whose `category`, `grpc_status` or `details.reason` is
  in the list (so `:timeout` matches `Snakepit.Error.timeout_error/2` and
  `:unavailable` matches a gRPC `UNAVAILABLE`).
  """

  alias Snakepit.Error

  @type t :: %__MODULE__{
          backoff_ms: [non_neg_integer()],
          backoff_multiplier: float(),
          base_backoff_ms: non_neg_integer(),
          jitter: boolean(),
          jitter_factor: float(),
          max_attempts: pos_integer(),
          max_backoff_ms: non_neg_integer(),
          retriable_errors: [atom()] | :all
        }

  @default_retriable [:timeout, :unavailable, :connection_refused, :econnrefused, :worker_crashed]

  @defaults [
    max_attempts: 3,
    backoff_ms: [100, 200, 400, 800, 1600],
    base_backoff_ms: 100,
    backoff_multiplier: 2.0,
    max_backoff_ms: 30_000,
    jitter: false,
    jitter_factor: 0.25,
    retriable_errors: @default_retriable
  ]

  defstruct @defaults

  # The built-in defaults, overridden by `config :snakepit, retry_*` keys.
  defp configured_defaults do
    alias Snakepit.Defaults

    Keyword.merge(@defaults,
      max_attempts: Defaults.retry_max_attempts(),
      backoff_ms: Defaults.retry_backoff_sequence(),
      base_backoff_ms: Defaults.retry_base_backoff_ms(),
      backoff_multiplier: Defaults.retry_backoff_multiplier(),
      max_backoff_ms: Defaults.retry_max_backoff_ms(),
      jitter_factor: Defaults.retry_jitter_factor()
    )
  end

  @doc """
  Creates a retry policy.

  ## Options

    * `:max_attempts` - total attempts, the first one included (default: 3)
    * `:backoff_ms` - list of delays in ms (default: `[100, 200, 400, 800, 1600]`)
    * `:base_backoff_ms` - base of the exponential backoff used beyond the
      list (default: 100)
    * `:backoff_multiplier` - growth factor, at least 1.0 (default: 2.0)
    * `:max_backoff_ms` - cap on any delay (default: 30000)
    * `:jitter` - randomise delays (default: false)
    * `:jitter_factor` - jitter range as a fraction of the delay, 0.0..1.0
      (default: 0.25)
    * `:retriable_errors` - reason atoms to retry, or `:all` (default:
      `#{inspect(@default_retriable)}`)

  Raises `ArgumentError` naming the option when an option has the wrong
  type or range, or when an option is unknown.
  """
  @spec new(keyword()) :: t()
  def new(opts \\ []) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "Snakepit.RetryPolicy.new/1 expects a keyword list, got: #{inspect(opts)}"
    end

    opts = Keyword.validate!(opts, configured_defaults())

    %__MODULE__{
      max_attempts: validate!(opts, :max_attempts, &pos_int?/1, "a positive integer"),
      backoff_ms:
        validate!(opts, :backoff_ms, &non_neg_int_list?/1, "a list of non-negative integers"),
      base_backoff_ms:
        validate!(opts, :base_backoff_ms, &non_neg_int?/1, "a non-negative integer"),
      backoff_multiplier:
        validate!(opts, :backoff_multiplier, &(is_number(&1) and &1 >= 1), "a number >= 1.0") / 1,
      max_backoff_ms: validate!(opts, :max_backoff_ms, &non_neg_int?/1, "a non-negative integer"),
      jitter: validate!(opts, :jitter, &is_boolean/1, "a boolean"),
      jitter_factor:
        validate!(
          opts,
          :jitter_factor,
          &(is_number(&1) and &1 >= 0 and &1 <= 1),
          "a number between 0.0 and 1.0"
        ) / 1,
      retriable_errors:
        validate!(
          opts,
          :retriable_errors,
          &(&1 == :all or (is_list(&1) and Enum.all?(&1, fn e -> is_atom(e) end))),
          "a list of atoms or :all"
        )
    }
  end

  @doc """
  Returns whether another attempt may follow `attempt` attempts already made.

      iex> policy = Snakepit.RetryPolicy.new(max_attempts: 3)
      iex> Enum.map(0..3, &Snakepit.RetryPolicy.should_retry?(policy, &1))
      [true, true, true, false]
  """
  @spec should_retry?(t(), non_neg_integer()) :: boolean()
  def should_retry?(%__MODULE__{max_attempts: max}, attempt)
      when is_integer(attempt) and attempt >= 0 do
    attempt < max
  end

  @doc """
  Returns the delay in ms to wait after the `attempt`-th failed attempt.

      iex> policy = Snakepit.RetryPolicy.new(backoff_ms: [100, 200], max_backoff_ms: 1000)
      iex> Enum.map(1..6, &Snakepit.RetryPolicy.backoff_for_attempt(policy, &1))
      [100, 200, 400, 800, 1000, 1000]
  """
  @spec backoff_for_attempt(t(), pos_integer()) :: non_neg_integer()
  def backoff_for_attempt(%__MODULE__{} = policy, attempt)
      when is_integer(attempt) and attempt >= 1 do
    policy
    |> base_delay(attempt)
    |> min(policy.max_backoff_ms)
    |> apply_jitter(policy)
  end

  def backoff_for_attempt(%__MODULE__{}, attempt) do
    raise ArgumentError, "attempt must be a positive integer, got: #{inspect(attempt)}"
  end

  @doc """
  Returns whether `error` is retriable under `policy`.

      iex> policy = Snakepit.RetryPolicy.new(retriable_errors: [:timeout])
      iex> Snakepit.RetryPolicy.retry_for_error?(policy, {:error, :timeout})
      true
      iex> Snakepit.RetryPolicy.retry_for_error?(policy, {:error, :badarg})
      false
  """
  @spec retry_for_error?(t(), {:error, atom()} | term()) :: boolean()
  def retry_for_error?(%__MODULE__{}, {:ok, _value}), do: false
  def retry_for_error?(%__MODULE__{}, :ok), do: false
  def retry_for_error?(%__MODULE__{retriable_errors: :all}, _error), do: true

  def retry_for_error?(%__MODULE__{retriable_errors: retriable}, error) do
    error |> reasons() |> Enum.any?(&(&1 in retriable))
  end

  defp reasons({:error, reason}), do: reasons(reason)
  defp reasons({reason, _detail}) when is_atom(reason), do: [reason]

  defp reasons(%Error{category: category, grpc_status: status, details: details}) do
    [category, status, Map.get(details, :reason)] |> Enum.filter(&is_atom/1)
  end

  defp reasons(reason) when is_atom(reason), do: [reason]
  defp reasons(_other), do: []

  defp base_delay(%__MODULE__{backoff_ms: list} = policy, attempt) do
    case Enum.at(list, attempt - 1) do
      nil -> exponential(policy, attempt)
      delay -> delay
    end
  end

  defp exponential(%__MODULE__{} = policy, attempt) do
    # Compute in floats, but never beyond the cap, to avoid huge numbers.
    delay = policy.base_backoff_ms * :math.pow(policy.backoff_multiplier, min(attempt - 1, 1023))
    delay |> min(policy.max_backoff_ms * 1.0) |> round()
  rescue
    ArithmeticError -> policy.max_backoff_ms
  end

  defp apply_jitter(delay, %__MODULE__{jitter: false}), do: delay

  defp apply_jitter(delay, %__MODULE__{jitter_factor: factor, max_backoff_ms: cap}) do
    low = delay * (1 - factor)
    high = delay * (1 + factor)
    jittered = low + :rand.uniform_real() * (high - low)

    # Keep the rounded value inside [low, high] so jitter never leaves its range.
    jittered
    |> round()
    |> max(ceil(low))
    |> min(floor(high))
    |> min(cap)
  end

  defp validate!(opts, key, valid?, expected) do
    value = Keyword.fetch!(opts, key)

    if valid?.(value) do
      value
    else
      raise ArgumentError,
            "invalid #{inspect(key)} option: expected #{expected}, got: #{inspect(value)}"
    end
  end

  defp pos_int?(v), do: is_integer(v) and v > 0
  defp non_neg_int?(v), do: is_integer(v) and v >= 0
  defp non_neg_int_list?(v), do: is_list(v) and Enum.all?(v, &non_neg_int?/1)
end
