defmodule Snakepit.Executor do
  @moduledoc """
  Execution helpers with retry, circuit breaker, and timeout support.

      # Retry transient failures
      Snakepit.Executor.execute_with_retry(fn -> risky_operation() end,
        max_attempts: 3,
        backoff_ms: [100, 200, 400]
      )

      # Through a circuit breaker
      Snakepit.Executor.execute_with_circuit_breaker(cb, fn -> external_call() end)

      # Bounded in time
      Snakepit.Executor.execute_with_timeout(fn -> slow_operation() end, timeout_ms: 5000)

  ## Results

  The helpers look at what the function returns: `{:ok, _}`, `:ok` and any
  other value are successes; `{:error, _}` and `:error` are failures. The
  retry helpers only retry failures whose reason is retriable under the
  `Snakepit.RetryPolicy` built from their options.

  `execute_with_timeout/2` and `execute_batch/2` run functions in separate
  processes; a function that raises, throws or exits there gives
  `{:error, {:exit, reason}}` (for a raise, `reason` is
  `{exception, stacktrace}`) instead of taking the caller down, and one that
  runs too long gives `{:error, :timeout}` and is killed.

  ## Telemetry

  The retry helpers emit `[:snakepit, :retry, :attempt]`
  (`%{attempt: n, delay_ms: ms}`), `[:snakepit, :retry, :backoff]`
  (`%{delay_ms: ms}`, metadata `attempt`), `[:snakepit, :retry, :success]`
  and `[:snakepit, :retry, :exhausted]` (`%{attempts: n, total_duration:
  native_time}`, metadata `last_error` on exhaustion). Metadata carries
  `pool` and `operation` when given as options (default `nil`).
  """

  alias Snakepit.{CircuitBreaker, RetryPolicy}

  @retry_defaults [
    max_attempts: 3,
    backoff_ms: [100, 200, 400],
    retriable_errors: [:timeout, :unavailable]
  ]
  @telemetry_keys [:pool, :operation]

  @doc "Executes a function directly in the caller's process."
  @spec execute((-> any()), keyword()) :: any()
  def execute(fun, _opts \\ []) when is_function(fun, 0), do: fun.()

  @doc """
  Executes a function asynchronously.

  Returns a `Task` (linked to the caller) that can be awaited with
  `Task.await/2`.
  """
  @spec execute_async((-> any()), keyword()) :: Task.t()
  def execute_async(fun, _opts \\ []) when is_function(fun, 0), do: Task.async(fun)

  @doc """
  Executes a function, retrying transient failures.

  ## Options

    * `:max_attempts` - total attempts (default: 3)
    * `:backoff_ms` - delays between attempts (default: `[100, 200, 400]`)
    * `:retriable_errors` - reasons to retry, or `:all`
      (default: `[:timeout, :unavailable]`)
    * `:jitter` - randomise delays (default: false)
    * any other `Snakepit.RetryPolicy.new/1` option, plus `:pool` and
      `:operation` for telemetry metadata

  Returns the first success, the first non-retriable failure, or the last
  failure once attempts are exhausted. Exceptions raised by `fun`
  propagate and are not retried.
  """
  @spec execute_with_retry((-> any()), keyword()) :: any()
  def execute_with_retry(fun, opts \\ []) when is_function(fun, 0) do
    {meta_opts, policy_opts} = Keyword.split(opts, @telemetry_keys)
    policy = RetryPolicy.new(Keyword.merge(@retry_defaults, policy_opts))
    meta = %{pool: meta_opts[:pool], operation: meta_opts[:operation]}
    retry_loop(fun, policy, meta, 1, System.monotonic_time())
  end

  @doc """
  Executes a function through a circuit breaker (see
  `Snakepit.CircuitBreaker.call/2`); returns `{:error, :circuit_open}` when
  the circuit rejects the call.
  """
  @spec execute_with_circuit_breaker(GenServer.server(), (-> any()), keyword()) :: any()
  def execute_with_circuit_breaker(circuit_breaker, fun, _opts \\ []) when is_function(fun, 0) do
    CircuitBreaker.call(circuit_breaker, fun)
  end

  @doc """
  Executes with retry and circuit breaker protection.

  Each attempt goes through the circuit breaker; options are those of
  `execute_with_retry/2`. `{:error, :circuit_open}` is not retried unless
  `:circuit_open` is listed in `:retriable_errors`, so retries stop as soon
  as the circuit opens.
  """
  @spec execute_with_protection(GenServer.server(), (-> any()), keyword()) :: any()
  def execute_with_protection(circuit_breaker, fun, opts \\ []) when is_function(fun, 0) do
    execute_with_retry(fn -> CircuitBreaker.call(circuit_breaker, fun) end, opts)
  end

  @doc """
  Executes a function with a timeout.

  Returns `{:error, :timeout}` (and kills the function's process) if it
  does not complete in time.

  ## Options

    * `:timeout_ms` - timeout in milliseconds (required)
  """
  @spec execute_with_timeout((-> any()), keyword()) :: any()
  def execute_with_timeout(fun, opts) when is_function(fun, 0) do
    opts = validate_keys!(opts, [:timeout_ms], "execute_with_timeout/2")

    timeout =
      case Keyword.fetch(opts, :timeout_ms) do
        {:ok, value} -> timeout!(value)
        :error -> raise ArgumentError, "execute_with_timeout/2 requires the :timeout_ms option"
      end

    task = Task.async(fn -> guarded(fun) end)

    case Task.yield(task, timeout) || Task.shutdown(task, :brutal_kill) do
      {:ok, outcome} -> unwrap(outcome)
      nil -> {:error, :timeout}
      {:exit, reason} -> {:error, {:exit, reason}}
    end
  end

  @doc """
  Executes multiple functions in parallel.

  Returns results in the same order as the input functions.

  ## Options

    * `:timeout_ms` - how long each function may run once started
      (default: 30000); one that runs longer is killed and gives
      `{:error, :timeout}`
    * `:max_concurrency` - maximum functions running at once
      (default: unlimited)
  """
  @spec execute_batch([(-> any())], keyword()) :: [any()]
  def execute_batch(functions, opts \\ []) when is_list(functions) do
    opts = validate_keys!(opts, [:timeout_ms, :max_concurrency], "execute_batch/2")

    unless Enum.all?(functions, &is_function(&1, 0)) do
      raise ArgumentError, "execute_batch/2 expects a list of zero-arity functions"
    end

    timeout =
      timeout!(Keyword.get_lazy(opts, :timeout_ms, &Snakepit.Defaults.executor_batch_timeout/0))

    max_concurrency =
      case Keyword.get(opts, :max_concurrency, :infinity) do
        :infinity -> max(length(functions), 1)
        n when is_integer(n) and n > 0 -> n
        other -> raise ArgumentError, "invalid :max_concurrency option: #{inspect(other)}"
      end

    functions
    |> Task.async_stream(&guarded/1,
      max_concurrency: max_concurrency,
      timeout: timeout,
      on_timeout: :kill_task,
      ordered: true
    )
    |> Enum.map(fn
      {:ok, outcome} -> unwrap(outcome)
      {:exit, :timeout} -> {:error, :timeout}
      {:exit, reason} -> {:error, {:exit, reason}}
    end)
  end

  # -- retry loop -----------------------------------------------------------

  defp retry_loop(fun, policy, meta, attempt, started) do
    result = fun.()

    cond do
      not failure?(result) ->
        emit(:success, %{attempts: attempt, total_duration: elapsed(started)}, meta)
        result

      not RetryPolicy.retry_for_error?(policy, result) ->
        result

      RetryPolicy.should_retry?(policy, attempt) ->
        delay = RetryPolicy.backoff_for_attempt(policy, attempt)
        emit(:attempt, %{attempt: attempt, delay_ms: delay}, meta)
        emit(:backoff, %{delay_ms: delay}, Map.put(meta, :attempt, attempt))
        wait(delay)
        retry_loop(fun, policy, meta, attempt + 1, started)

      true ->
        emit(
          :exhausted,
          %{attempts: attempt, total_duration: elapsed(started)},
          Map.put(meta, :last_error, result)
        )

        result
    end
  end

  defp failure?({:error, _}), do: true
  defp failure?(:error), do: true
  defp failure?(_), do: false

  defp wait(0), do: :ok
  defp wait(delay), do: Process.sleep(delay)

  defp elapsed(started), do: System.monotonic_time() - started

  defp emit(event, measurements, meta) do
    Snakepit.Telemetry.emit([:snakepit, :retry, event], measurements, meta)
  end

  # -- isolation helpers ----------------------------------------------------

  # Runs `fun` so that the process running it never crashes; the outcome is
  # turned back into a value by unwrap/1.
  defp guarded(fun) do
    {:ok, fun.()}
  catch
    :error, reason ->
      {:crashed, {Exception.normalize(:error, reason, __STACKTRACE__), __STACKTRACE__}}

    :exit, reason ->
      {:crashed, reason}

    :throw, value ->
      {:crashed, {:nocatch, value}}
  end

  defp unwrap({:ok, result}), do: result
  defp unwrap({:crashed, reason}), do: {:error, {:exit, reason}}

  defp timeout!(:infinity), do: :infinity
  defp timeout!(ms) when is_integer(ms) and ms >= 0, do: ms

  defp timeout!(other) do
    raise ArgumentError,
          "invalid :timeout_ms option: expected a non-negative integer, got: #{inspect(other)}"
  end

  defp validate_keys!(opts, allowed, function) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "#{function} expects a keyword list of options, got: #{inspect(opts)}"
    end

    case Keyword.keys(opts) -- allowed do
      [] -> opts
      unknown -> raise ArgumentError, "unknown options for #{function}: #{inspect(unknown)}"
    end
  end
end
