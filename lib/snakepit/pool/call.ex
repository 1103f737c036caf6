defmodule Snakepit.Pool.Call do
  @moduledoc """
  The caller's side of a call: it runs in the caller's own process.

  A call leases a worker slot from the pool (`Snakepit.Pool.Checkout`),
  calls the worker straight through the native core
  (`Snakepit.GRPC.Client`), and gives the slot back, so the pool never
  sits between a caller and its reply. A crash of an idempotent call may
  be retried on another worker under `Snakepit.CrashBarrier`. A call that
  timed out is stopped by the pool, which tells the caller how; one that
  may still run in its worker for another reason (its stream was
  abandoned, its transport failed) is handed back as `:cancel`, and the
  pool stops it before the slot is reused. A call of a batched tool joins
  a batch (`Snakepit.Pool.Batching`), and `execute_many/4` sends many
  items per message.
  """

  alias Snakepit.{CrashBarrier, Defaults, Error, Telemetry}
  alias Snakepit.Telemetry.Correlation
  alias Snakepit.GRPC.Client
  alias Snakepit.Transport.NativeCall
  alias Snakepit.Pool.{Batching, CallOptions, CallSettings, Checkout, Deadline}

  @doc """
  Runs `command` with `args` on a worker. Options (as `Snakepit.execute/3`):

  #{Snakepit.Pool.CallOptions.doc()}
  """
  @spec execute(String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute(command, args, opts \\ []) do
    with {:ok, opts} <- CallOptions.normalize(opts), do: execute_checked(command, args, opts)
  end

  @doc false
  # `execute/3` with options already checked by `CallOptions.normalize/1`
  # (as `Snakepit.execute/3` does): not checked twice.
  @spec execute_checked(String.t(), map(), keyword()) :: {:ok, term()} | {:error, Error.t()}
  def execute_checked(command, args, opts) do
    # What prepare/4 checks, without building new options: this is every
    # call's path.
    settings = CallSettings.get()

    with {:ok, correlation_id} <- Correlation.of_options(opts),
         total = CallSettings.total(opts, settings),
         :ok <- validate_call(command, args, total),
         {:ok, pid, name} <- Checkout.resolve_pool(opts) do
      deadline = Deadline.of(opts, total)

      # A batched tool's call joins a batch (Snakepit.Pool.Batching).
      case Batching.route(pid, name, command) do
        nil ->
          # The pool estimates run times per command.
          opts = [{:command, command} | opts]
          direct(command, args, opts, {pid, name}, {correlation_id, deadline, settings})

        target ->
          Batching.call(target, command, args, opts, deadline)
      end
    end
  end

  defp direct(command, args, opts, pool, {correlation_id, deadline, settings}) do
    idempotent = Keyword.get(opts, :idempotent) == true or CrashBarrier.idempotent?(args)

    call = %{
      command: command,
      args: args,
      correlation_id: correlation_id,
      deadline: deadline,
      settings: settings,
      started: System.monotonic_time(),
      session_id: Keyword.get(opts, :session_id),
      binary_parameters: Keyword.get(opts, :binary_parameters),
      metadata: Correlation.worker_metadata(opts, correlation_id)
    }

    attempt(pool, opts, deadline, idempotent, 0, [], call)
  end

  # The call of `direct/5` on `lease`.
  defp run_direct(call, lease) do
    # The call to Python gets the rpc deadline; a timed-out call is stopped
    # by the pool, the caller learning how within its own deadline.
    call_opts = %{
      timeout_ms: NativeCall.timeout_ms(CallSettings.rpc_remaining(call.deadline, call.settings)),
      request_id: lease.request_id,
      session_id: call.session_id,
      metadata: call.metadata,
      binary_parameters: call.binary_parameters
    }

    deadline = call.deadline
    stop = fn -> Checkout.stop(lease, deadline) end
    %{command: command, correlation_id: correlation_id} = call

    result =
      Client.execute_leased(lease.worker, command, call.args, call_opts, correlation_id, stop)

    emit_executed(lease, command, result, call.started, correlation_id)
    result
  end

  # Queueing included: the time the caller waited for its answer.
  defp emit_executed(lease, command, result, started, correlation_id) do
    if Telemetry.handled?([:snakepit, :request, :executed]),
      do: executed(lease, command, result, started, correlation_id)
  end

  defp executed(lease, command, result, started, correlation_id) do
    duration_us =
      :erlang.convert_time_unit(:erlang.monotonic_time() - started, :native, :microsecond)

    Telemetry.emit([:snakepit, :request, :executed], %{duration_us: duration_us}, %{
      pool: lease.pool,
      worker_id: lease.worker.id,
      command: command,
      success: match?({:ok, _}, result),
      correlation_id: correlation_id,
      node: node()
    })
  end

  @doc """
  Runs a streaming `command`, calling `callback` with each chunk. Options as
  `execute/3`; the default budget is `Snakepit.Defaults.pool_streaming_timeout/0`
  and the queue budget `Snakepit.Defaults.checkout_timeout/0`. Streams are
  never retried.
  """
  @spec execute_stream(String.t(), map(), (map() -> term()), keyword()) ::
          :ok | {:error, Error.t()}
  def execute_stream(command, args, callback, opts \\ []) do
    with {:ok, opts, total} <- prepare(:execute_stream, command, args, opts),
         :ok <- validate_callback(callback) do
      deadline = Deadline.of(opts, total)
      opts = Keyword.put_new(opts, :queue_timeout, Defaults.checkout_timeout())

      with {:ok, lease} <- Checkout.checkout(opts, deadline) do
        call_opts = call_opts(opts, lease, deadline)
        # Checked in whatever happens, a raising callback included; a
        # stream that did not end is stopped before its slot is reused.
        {result, ended} =
          try do
            Snakepit.Transport.StreamCall.run(lease.worker, command, args, callback, call_opts)
          rescue
            e ->
              Checkout.checkin(lease, :cancel)
              reraise e, __STACKTRACE__
          catch
            kind, reason ->
              Checkout.checkin(lease, :cancel)
              :erlang.raise(kind, reason, __STACKTRACE__)
          end

        result = Checkout.confirm_crash(result, lease)
        Checkout.checkin(lease, if(ended == :ended, do: result, else: :cancel))
        result
      end
    end
  end

  # One attempt of a call; a crash of its worker may lead to another
  # attempt, on another worker, when the crash barrier allows it.
  defp attempt({pid, name} = pool, opts, deadline, idempotent, n, avoid, call) do
    opts = if avoid == [], do: opts, else: Keyword.put(opts, :avoid, avoid)

    with {:ok, lease} <- Checkout.checkout(pid, name, opts, deadline) do
      result = call |> run_direct(lease) |> Checkout.confirm_crash(lease)
      Checkout.checkin(lease, result)

      case CrashBarrier.crash_info(result, lease.crash_barrier) do
        nil ->
          result

        info ->
          config = lease.crash_barrier

          if CrashBarrier.retry_allowed?(config, idempotent, n) and
               Deadline.remaining(deadline) > 0 do
            backoff = CrashBarrier.retry_backoff(config, n)

            Telemetry.emit(
              [:snakepit, :crash_barrier, :retry],
              %{attempt: n + 1, backoff_ms: backoff},
              %{pool: lease.pool, worker_id: info.worker_id, classification: info.classification}
            )

            # A deliberate pause before the retry, not a wait for an event.
            Process.sleep(min(backoff, Deadline.remaining(deadline)))
            opts = Checkout.retry_opts(opts)
            attempt(pool, opts, deadline, idempotent, n + 1, [info.worker_id | avoid], call)
          else
            CrashBarrier.normalize_crash_error(result, info)
          end
      end
    end
  end

  @doc false
  # Options checked and completed (aliases, a correlation id), the total
  # budget, and the command and arguments checked: before anything is leased.
  @spec prepare(atom(), term(), term(), term()) ::
          {:ok, keyword(), timeout()} | {:error, Error.t()}
  def prepare(call_type, command, args, opts) do
    with {:ok, opts} <- CallOptions.normalize(opts), do: prepared(call_type, command, args, opts)
  end

  defp prepared(call_type, command, args, opts) do
    with {:ok, opts} <- Correlation.ensure_option(opts),
         total = Deadline.total(call_type, opts),
         :ok <- validate_call(command, args, total),
         # The pool estimates run times per command.
         do: {:ok, [{:command, command} | opts], total}
  end

  defp validate_call(command, args, timeout) do
    cond do
      not is_binary(command) or command == "" ->
        {:error,
         Error.validation_error("command must be a non-empty string, got: #{inspect(command)}")}

      not is_map(args) ->
        {:error, Error.validation_error("args must be a map, got: #{inspect(args)}")}

      not (timeout == :infinity or (is_integer(timeout) and timeout > 0)) ->
        {:error,
         Error.validation_error(
           "timeout must be a positive integer or :infinity, got: #{inspect(timeout)}"
         )}

      true ->
        :ok
    end
  end

  defp validate_callback(callback) when is_function(callback, 1), do: :ok

  defp validate_callback(other),
    do:
      {:error,
       Error.validation_error("callback must be a function of arity 1, got: #{inspect(other)}")}

  # The call to Python gets the rpc deadline; a timed-out call is stopped
  # by the pool, the caller learning how within its own deadline.
  defp call_opts(opts, lease, deadline) do
    [
      session_id: Keyword.get(opts, :session_id),
      binary_parameters: Keyword.get(opts, :binary_parameters),
      correlation_id: Keyword.get(opts, :correlation_id),
      metadata: Correlation.worker_metadata(opts),
      deadline: Deadline.rpc_deadline(deadline),
      request_id: lease.request_id,
      stop: fn -> Checkout.stop(lease, deadline) end
    ]
  end

  # -- execute_many ----------------------------------------------------------------

  @doc false
  # See Snakepit.execute_many/3. `opts` are checked call options; the
  # pool is resolved.
  @spec execute_many(String.t(), list(), keyword(), pos_integer() | nil) ::
          [Batching.result()] | {:error, Error.t()}
  def execute_many(command, items, opts, chunk_size) do
    with {:ok, opts, total} <- prepare(:execute, command, %{}, opts),
         {:ok, pid, name} <- Checkout.resolve_pool(opts),
         {:ok, slots} <- slots(pid, name) do
      deadline = Deadline.of(opts, total)
      opts = Keyword.put(opts, :pool, {pid, name})
      idempotent = Keyword.get(opts, :idempotent) == true

      {good, bad} =
        items
        |> Enum.with_index()
        |> Enum.split_with(fn {args, _i} -> is_map(args) end)

      good =
        for {args, i} <- good,
            do: {i, args, nil, idempotent or CrashBarrier.idempotent?(args), deadline}

      size = chunk_size || min(max(div(length(good) + slots - 1, slots), 1), Batching.max_chunk())

      done =
        good
        |> Enum.chunk_every(size)
        |> Task.async_stream(&(opts |> Batching.run(command, deadline, &1) |> List.keysort(0)),
          max_concurrency: slots,
          timeout: :infinity
        )
        |> Enum.flat_map(fn {:ok, results} -> results end)

      if bad == [] do
        Enum.map(done, &elem(&1, 1))
      else
        bad
        |> Enum.map(fn {args, i} -> {i, {:error, not_a_map(i, args)}} end)
        |> Enum.concat(done)
        |> List.keysort(0)
        |> Enum.map(&elem(&1, 1))
      end
    end
  end

  defp not_a_map(i, args) do
    Error.validation_error(
      "item #{i} of execute_many is not a map of arguments: #{inspect(args, limit: 10)}",
      %{option: :items, index: i, value: args, expected: "a map of arguments"}
    )
  end

  # How many calls the pool can run at once: how many chunks go at once.
  defp slots(pid, name) do
    case GenServer.call(pid, {:capacity, name}) do
      {:ok, n} -> {:ok, max(n, 1)}
      {:error, _} = error -> error
    end
  catch
    :exit, reason ->
      {:error, Error.pool_error("pool is not available: #{inspect(reason)}", %{pool: name})}
  end
end
