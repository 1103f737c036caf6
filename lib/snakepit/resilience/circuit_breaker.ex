defmodule Snakepit.CircuitBreaker do
  @moduledoc """
  Circuit breaker for Python worker fault tolerance.

  Stops sending work to something that keeps failing, then lets a few
  probe calls through after a pause to see whether it recovered.

  ## States

    * `:closed` - normal operation, all calls allowed
    * `:open` - `failure_threshold` consecutive failures were seen; calls are
      rejected with `{:error, :circuit_open}` until `reset_timeout_ms` pass
    * `:half_open` - testing whether the service recovered: at most
      `half_open_max_calls` calls go through; the first success closes the
      circuit, a failure opens it again

  ## Usage

      {:ok, cb} = Snakepit.CircuitBreaker.start_link(name: :my_cb, failure_threshold: 5)

      case Snakepit.CircuitBreaker.call(cb, fn -> risky_operation() end) do
        {:ok, result} -> handle_success(result)
        {:error, :circuit_open} -> handle_circuit_open()
        {:error, reason} -> handle_error(reason)
      end

  `call/2` runs the function in the caller's process. A result of
  `{:error, _}` or `:error`, or a raise/throw/exit, counts as a failure
  (the exception is re-raised after it is recorded); any other result counts
  as a success. If a caller holding a half-open slot dies before it
  finishes, that counts as a failure too, so the circuit never stays stuck
  in `:half_open`.

  The state machine itself is `Snakepit.CircuitBreaker.State`.

  ## Telemetry

    * `[:snakepit, :circuit_breaker, :opened]` - `%{failure_count: n}`,
      `%{pool: name, reason: :failure_threshold | :half_open_failure}`
    * `[:snakepit, :circuit_breaker, :half_open]` and `[..., :closed]` -
      `%{}`, `%{pool: name}`
    * `[:snakepit, :circuit_breaker, :call, :allowed | :rejected]` -
      `%{}`, `%{pool: name, state: state}`
    * `[:snakepit, :circuit_breaker, :call, :success | :failure]` -
      `%{duration: native_time}`, `%{pool: name}` (plus `error:` on failure)

  `pool` is the breaker's `:name` (or `nil`).
  """

  use GenServer

  alias Snakepit.CircuitBreaker.State

  @type state :: :closed | :open | :half_open

  @type t :: %{
          state: state(),
          failure_count: non_neg_integer(),
          success_count: non_neg_integer(),
          failure_threshold: pos_integer(),
          reset_timeout_ms: pos_integer(),
          half_open_max_calls: pos_integer(),
          half_open_calls: non_neg_integer(),
          last_failure_time: integer() | nil,
          name: atom() | nil
        }

  @options [:name, :failure_threshold, :reset_timeout_ms, :half_open_max_calls, :clock]

  @doc """
  Starts a circuit breaker.

  ## Options

    * `:name` - GenServer name (optional)
    * `:failure_threshold` - consecutive failures before opening (default: 5)
    * `:reset_timeout_ms` - time before trying half-open (default: 30000)
    * `:half_open_max_calls` - calls admitted in half-open (default: 1)
    * `:clock` - zero-arity function returning monotonic milliseconds
      (default: `System.monotonic_time(:millisecond)`); for tests

  Raises `ArgumentError` naming the option for unknown options or values
  of the wrong type.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    {breaker, clock, gen_opts} = build!(opts)
    GenServer.start_link(__MODULE__, {breaker, clock}, gen_opts)
  end

  @doc """
  Executes `fun` through the circuit breaker.

  Returns `{:error, :circuit_open}` without calling `fun` when the circuit
  is open (or half-open with all probe slots taken); otherwise returns what
  `fun` returns.
  """
  @spec call(GenServer.server(), (-> any())) :: any()
  def call(server, fun) when is_function(fun, 0) do
    case GenServer.call(server, :acquire) do
      {:ok, permit} ->
        started = System.monotonic_time()

        try do
          fun.()
        catch
          kind, reason ->
            GenServer.call(server, {:complete, permit, {:failure, {kind, reason}}, started})
            :erlang.raise(kind, reason, __STACKTRACE__)
        else
          result ->
            outcome = if failure?(result), do: {:failure, result}, else: :success
            GenServer.call(server, {:complete, permit, outcome, started})
            result
        end

      :rejected ->
        {:error, :circuit_open}
    end
  end

  @doc """
  Returns whether a call would be admitted now. Does not take a half-open
  slot; pair it with `record_success/1` and `record_failure/1`.
  """
  @spec allow_call?(GenServer.server()) :: boolean()
  def allow_call?(server), do: GenServer.call(server, :allow?)

  @doc "Records a successful call."
  @spec record_success(GenServer.server()) :: :ok
  def record_success(server), do: GenServer.call(server, :success)

  @doc "Records a failed call."
  @spec record_failure(GenServer.server()) :: :ok
  def record_failure(server), do: GenServer.call(server, :failure)

  @doc "Resets the circuit breaker to the closed state."
  @spec reset(GenServer.server()) :: :ok
  def reset(server), do: GenServer.call(server, :reset)

  @doc "Returns the current circuit state."
  @spec state(GenServer.server()) :: state()
  def state(server), do: GenServer.call(server, :state)

  @doc """
  Returns circuit breaker statistics: the fields of `t:t/0` plus
  `total_calls` (admitted by `call/2`) and `rejected_calls`.
  `last_failure_time` is in monotonic milliseconds (the breaker's clock).
  """
  @spec stats(GenServer.server()) :: map()
  def stats(server), do: GenServer.call(server, :stats)

  # -- GenServer ------------------------------------------------------------

  @impl true
  def init({breaker, clock}) do
    {:ok, %{breaker: breaker, clock: clock, permits: %{}, timer: nil}}
  end

  @impl true
  def handle_call(:acquire, {caller, _tag}, data) do
    before = data.breaker
    {verdict, breaker} = State.acquire(before, now(data))
    meta = %{pool: breaker.name, state: breaker.state}

    case verdict do
      :ok ->
        emit([:call, :allowed], %{}, meta)
        {permit, data} = take_permit(data, before, breaker, caller)
        {:reply, {:ok, permit}, transition(data, before, breaker)}

      :rejected ->
        emit([:call, :rejected], %{}, meta)
        {:reply, :rejected, transition(data, before, breaker)}
    end
  end

  def handle_call({:complete, permit, outcome, started}, _from, data) do
    data = drop_permit(data, permit)
    duration = System.monotonic_time() - started
    before = data.breaker

    breaker =
      case outcome do
        :success ->
          emit([:call, :success], %{duration: duration}, %{pool: before.name})
          State.success(before, now(data))

        {:failure, error} ->
          emit([:call, :failure], %{duration: duration}, %{pool: before.name, error: error})
          State.failure(before, now(data))
      end

    {:reply, :ok, transition(data, before, breaker)}
  end

  def handle_call(:allow?, _from, data) do
    {allowed, breaker} = State.allow?(data.breaker, now(data))
    {:reply, allowed, transition(data, data.breaker, breaker)}
  end

  def handle_call(:success, _from, data) do
    {:reply, :ok, transition(data, data.breaker, State.success(data.breaker, now(data)))}
  end

  def handle_call(:failure, _from, data) do
    {:reply, :ok, transition(data, data.breaker, State.failure(data.breaker, now(data)))}
  end

  def handle_call(:reset, _from, data) do
    Enum.each(data.permits, fn {ref, _} -> Process.demonitor(ref, [:flush]) end)
    data = %{data | permits: %{}}
    {:reply, :ok, transition(data, data.breaker, State.reset(data.breaker))}
  end

  def handle_call(:state, _from, data) do
    {circuit, breaker} = State.status(data.breaker, now(data))
    {:reply, circuit, transition(data, data.breaker, breaker)}
  end

  def handle_call(:stats, _from, data) do
    {stats, breaker} = State.stats(data.breaker, now(data))
    {:reply, stats, transition(data, data.breaker, breaker)}
  end

  @impl true
  def handle_info(:reset_timeout, data) do
    data = %{data | timer: nil}
    {_circuit, breaker} = State.status(data.breaker, now(data))
    {:noreply, transition(data, data.breaker, breaker)}
  end

  # A caller died while holding a half-open slot: count it as a failure.
  def handle_info({:DOWN, ref, :process, _pid, reason}, data)
      when is_map_key(data.permits, ref) do
    data = %{data | permits: Map.delete(data.permits, ref)}
    before = data.breaker
    emit([:call, :failure], %{duration: 0}, %{pool: before.name, error: {:caller_down, reason}})
    {:noreply, transition(data, before, State.failure(before, now(data)))}
  end

  def handle_info(_message, data), do: {:noreply, data}

  # -- helpers --------------------------------------------------------------

  defp build!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "Snakepit.CircuitBreaker expects a keyword list, got: #{inspect(opts)}"
    end

    case Keyword.keys(opts) -- @options do
      [] ->
        :ok

      unknown ->
        raise ArgumentError, "unknown Snakepit.CircuitBreaker options: #{inspect(unknown)}"
    end

    clock = Keyword.get(opts, :clock, fn -> System.monotonic_time(:millisecond) end)

    unless is_function(clock, 0) do
      raise ArgumentError, "invalid :clock option: expected a zero-arity function"
    end

    gen_opts = if Keyword.has_key?(opts, :name), do: [name: opts[:name]], else: []
    {State.new(opts), clock, gen_opts}
  end

  defp now(%{clock: clock}), do: clock.()

  defp failure?({:error, _reason}), do: true
  defp failure?(:error), do: true
  defp failure?(_result), do: false

  # Half-open slots are tied to the caller so a dead caller frees its slot.
  defp take_permit(data, _before, %State{state: :half_open}, caller) do
    ref = Process.monitor(caller)
    {ref, %{data | permits: Map.put(data.permits, ref, caller)}}
  end

  defp take_permit(data, _before, _after, _caller), do: {nil, data}

  defp drop_permit(data, nil), do: data

  defp drop_permit(data, ref) do
    Process.demonitor(ref, [:flush])
    %{data | permits: Map.delete(data.permits, ref)}
  end

  defp transition(data, %State{state: same}, %State{state: same} = breaker) do
    %{data | breaker: breaker}
  end

  defp transition(data, %State{} = before, %State{} = breaker) do
    case breaker.state do
      :open ->
        reason = if before.state == :half_open, do: :half_open_failure, else: :failure_threshold

        emit([:opened], %{failure_count: breaker.failure_count}, %{
          pool: breaker.name,
          reason: reason
        })

        %{data | breaker: breaker, timer: schedule_probe(data.timer, breaker.reset_timeout_ms)}

      :half_open ->
        emit([:half_open], %{}, %{pool: breaker.name})
        %{data | breaker: breaker}

      :closed ->
        emit([:closed], %{}, %{pool: breaker.name})
        %{data | breaker: breaker}
    end
  end

  defp schedule_probe(old_timer, timeout) do
    if old_timer, do: Process.cancel_timer(old_timer)
    Process.send_after(self(), :reset_timeout, timeout)
  end

  defp emit(suffix, measurements, metadata) do
    Snakepit.Telemetry.emit([:snakepit, :circuit_breaker | suffix], measurements, metadata)
  end
end
