defmodule Snakepit.Pool.Call do
  @moduledoc """
  The caller's side of a call: it runs in the caller's own process.

  A call leases a worker slot from the pool (`checkout/2`), calls the
  worker straight through the native core (`Snakepit.GRPC.Client`), and
  gives the slot back (`checkin/2`), so the pool never sits between a
  caller and its reply. A transport failure is confirmed as a crash when
  the worker's process died (`confirm_crash/2`); a crash of an idempotent
  call may be retried on another worker under `Snakepit.CrashBarrier`. A
  call that may still run in its worker (it timed out, its stream was
  abandoned) is handed back as `:cancel`, and the pool stops it before the
  slot is reused.
  """

  alias Snakepit.{CrashBarrier, Defaults, Error, Telemetry}
  alias Snakepit.Telemetry.Correlation
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.GRPC.Client
  alias Snakepit.Pool.{Batching, CallOptions, Deadline, Errors, Timings}
  alias Snakepit.Worker.ExitStatus

  # The pool answers a queued request itself when its queue time is up; the
  # caller's own wait is this much longer, as a safety net only.
  @checkout_slack_ms 1_000
  # How long a caller whose call failed at the transport level waits to
  # learn whether its worker's process died (a crash) or not.
  @crash_confirm_ms 1_000
  @transport_statuses [:unavailable, :unknown, :internal, :cancelled, :aborted, :data_loss]

  @type lease :: %{
          ref: reference(),
          request_id: String.t(),
          pool: atom(),
          pool_pid: pid(),
          worker: map(),
          crash_barrier: map(),
          timings: Timings.t(),
          leased_at: integer()
        }

  @doc "gRPC statuses that may mean the worker's process died under the call."
  @spec transport_statuses() :: [atom()]
  def transport_statuses, do: @transport_statuses

  @doc "How long a transport failure waits to learn whether its worker died."
  @spec crash_confirm_ms() :: pos_integer()
  def crash_confirm_ms, do: @crash_confirm_ms

  @doc """
  Runs `command` with `args` on a worker. Options:

    * `:pool` - pool name (default: the first configured pool)
    * `:timeout` - total budget in ms (default `Snakepit.Pool.get_default_timeout_for_call(:execute, ...)`)
    * `:deadline_ms` - absolute deadline (monotonic ms); the earlier of it and `:timeout` applies
    * `:session_id` - session affinity; `:affinity` overrides the pool's mode
    * `:idempotent` - `true` lets the crash barrier retry the call on another worker
      (as does `idempotent: true` in `args`)
    * `:metadata`, `:binary_parameters` - passed to the worker
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
    with {:ok, opts, total} <- prepared(:execute, command, args, opts),
         {:ok, pid, name} <- resolve_pool(opts) do
      deadline = Deadline.of(opts, total)

      # A batched tool's call joins a batch (Snakepit.Pool.Batching).
      case Batching.route(pid, name, command) do
        nil -> direct(command, args, Keyword.put(opts, :pool, {pid, name}), deadline)
        target -> Batching.call(target, command, args, opts, deadline)
      end
    end
  end

  defp direct(command, args, opts, deadline) do
    idempotent = Keyword.get(opts, :idempotent) == true or CrashBarrier.idempotent?(args)
    started = System.monotonic_time()

    attempt(opts, deadline, idempotent, 0, [], fn lease ->
      result = Client.execute(lease.worker, command, args, call_opts(opts, lease, deadline))
      emit_executed(lease, command, result, started, opts[:correlation_id])
      result
    end)
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

      with {:ok, lease} <- checkout(opts, deadline) do
        call_opts = call_opts(opts, lease, deadline)
        # Checked in whatever happens, a raising callback included; a
        # stream that did not end is stopped before its slot is reused.
        {result, ended} =
          try do
            Client.stream(lease.worker, command, args, callback, call_opts)
          rescue
            e ->
              checkin(lease, :cancel)
              reraise e, __STACKTRACE__
          catch
            kind, reason ->
              checkin(lease, :cancel)
              :erlang.raise(kind, reason, __STACKTRACE__)
          end

        result = confirm_crash(result, lease)
        checkin(lease, if(ended == :ended, do: result, else: :cancel))
        result
      end
    end
  end

  # One attempt of a call; a crash of its worker may lead to another
  # attempt, on another worker, when the crash barrier allows it.
  defp attempt(opts, deadline, idempotent, n, avoid, fun) do
    opts = if avoid == [], do: opts, else: Keyword.put(opts, :avoid, avoid)

    with {:ok, lease} <- checkout(opts, deadline) do
      result = fun.(lease) |> confirm_crash(lease)
      checkin(lease, result)

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
            opts = retry_opts(opts)
            attempt(opts, deadline, idempotent, n + 1, [info.worker_id | avoid], fun)
          else
            CrashBarrier.normalize_crash_error(result, info)
          end
      end
    end
  end

  @doc false
  # The options of a crash barrier's retry: its wait for a worker is capped.
  @spec retry_opts(keyword()) :: keyword()
  def retry_opts(opts) do
    Keyword.put(
      opts,
      :queue_timeout,
      Deadline.earliest(
        Keyword.get(opts, :queue_timeout, :infinity),
        Defaults.crash_barrier_checkout_timeout()
      )
    )
  end

  @doc false
  # A transport failure may mean the worker's Python process died under
  # the call. Find out (the worker process stops when Python exits) and
  # report it as a crash, or as a shutdown when the worker was stopped on
  # purpose (its pool or Snakepit stopping): no wait when it says so first.
  @spec confirm_crash(term(), lease()) :: term()
  def confirm_crash(
        {:error, %Error{category: :grpc_error, grpc_status: status} = error} = result,
        lease
      )
      when status in @transport_statuses do
    worker = lease.worker

    if stopped?(lease) do
      {:error, shutdown_error(error, lease)}
    else
      mref = Process.monitor(worker.pid)

      receive do
        # Gone before we looked (:noproc): its worker recorded how it ended.
        {:DOWN, ^mref, :process, _, :noproc} ->
          {:error, ended_error(error, lease, ExitStatus.last(worker.os_pid))}

        # Stopped by its supervisor: its pool or Snakepit is stopping.
        {:DOWN, ^mref, :process, _, reason} when reason in [:shutdown, :normal] ->
          {:error, shutdown_error(error, lease)}

        {:DOWN, ^mref, :process, _, reason} ->
          {:error, crash_error(error, lease, ExitStatus.of_reason(reason))}
      after
        @crash_confirm_ms ->
          Process.demonitor(mref, [:flush])

          cond do
            stopped?(lease) -> {:error, shutdown_error(error, lease)}
            Snakepit.Native.process_alive(worker.os_pid) -> result
            true -> {:error, crash_error(error, lease, ExitStatus.last(worker.os_pid))}
          end
      end
    end
  end

  def confirm_crash(result, _lease), do: result

  # The worker recorded that it was stopped on purpose since this call began.
  defp stopped?(lease), do: ExitStatus.stopped_since?(lease.worker.os_pid, lease.leased_at)

  defp ended_error(error, lease, :stopped), do: shutdown_error(error, lease)
  defp ended_error(error, lease, status), do: crash_error(error, lease, status)

  defp crash_error(error, lease, status) do
    id = lease.worker.id

    Error.worker_error(
      "worker #{id} crashed during the call (it #{ExitStatus.describe(status)}): #{error.message}",
      Map.merge(error.details, %{
        reason: :worker_crash,
        worker_id: id,
        pool: lease.pool,
        exit_status: status
      })
    )
  end

  defp shutdown_error(error, lease) do
    Errors.shutdown(
      "the call was cut short: worker #{lease.worker.id} was stopped because its pool " <>
        "(or Snakepit) is shutting down",
      Map.merge(error.details, %{worker_id: lease.worker.id, pool: lease.pool})
    )
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
         total = Snakepit.Pool.get_default_timeout_for_call(call_type, args, opts),
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
  # in the worker by its request id, learning how within the caller's own
  # deadline.
  defp call_opts(opts, lease, deadline) do
    [
      session_id: Keyword.get(opts, :session_id),
      binary_parameters: Keyword.get(opts, :binary_parameters),
      correlation_id: Keyword.get(opts, :correlation_id),
      metadata: Correlation.worker_metadata(opts),
      deadline: Deadline.rpc_deadline(deadline),
      stop_by: deadline,
      request_id: lease.request_id
    ]
  end

  # The pool process serving `name`: a pool in a host's own tree, else the
  # application's.
  defp server_of(name), do: Snakepit.Pool.Names.whereis(name) || Snakepit.Pool

  # Without pool:, the application's pools; with none running and exactly
  # one pool started in a host's tree, that one.
  # The pid when it is running, so the lookup below is not made twice on
  # every call.
  defp default_server do
    case Process.whereis(Snakepit.Pool) do
      pid when is_pid(pid) ->
        {pid, nil}

      nil ->
        case Snakepit.Pool.Names.names() do
          [name] -> {server_of(name), name}
          _ -> {Snakepit.Pool, nil}
        end
    end
  end

  @doc false
  # The pool process and pool name `opts` name (nil: the process's default).
  @spec resolve_pool(keyword()) :: {:ok, pid(), atom() | nil} | {:error, Error.t()}
  def resolve_pool(opts) do
    {server, name} =
      case Keyword.get(opts, :pool) do
        nil -> default_server()
        pid when is_pid(pid) -> {pid, nil}
        Snakepit.Pool -> {Snakepit.Pool, nil}
        {server, name} -> {server, name}
        name when is_atom(name) -> {Keyword.get(opts, :pool_server) || server_of(name), name}
      end

    case GenServer.whereis(server) do
      nil ->
        {:error,
         Error.pool_error("Snakepit pool #{inspect(server)} is not running", %{pool: server})}

      pid ->
        {:ok, pid, name}
    end
  end

  @doc false
  # Leases a worker slot. Options as `execute/3`, plus `:avoid` (worker ids
  # to keep away from) and `:queue_timeout` (a cap on the pool's own).
  @spec checkout(keyword(), integer() | :infinity) :: {:ok, lease()} | {:error, Error.t()}
  def checkout(opts, deadline) do
    with {:ok, pid, name} <- resolve_pool(opts) do
      ref = make_ref()
      session = Keyword.get(opts, :session_id)

      request = %{
        ref: ref,
        # Names the call in the worker, so it can be stopped there.
        request_id: Integer.to_string(System.unique_integer([:positive])),
        pool: name,
        session_id: session,
        affinity: Keyword.get(opts, :affinity),
        stored_worker: session && SessionStore.last_worker(session),
        avoid: Keyword.get(opts, :avoid, []),
        deadline: deadline,
        command: Keyword.get(opts, :command),
        queue_cap: Keyword.get(opts, :queue_timeout, :infinity)
      }

      wait =
        if deadline == :infinity,
          do: :infinity,
          else: Deadline.remaining(deadline) + @checkout_slack_ms

      started = System.monotonic_time()

      try do
        case GenServer.call(pid, {:checkout, request}, wait) do
          {:ok, lease} ->
            leased_at = System.monotonic_time()
            Timings.record(lease.timings, :wait, leased_at - started)
            {:ok, Map.put(lease, :leased_at, leased_at)}

          error ->
            error
        end
      catch
        :exit, {:timeout, _} ->
          send(pid, {:cancel_checkout, name, ref})
          {:error, Error.timeout_error("no worker was free in time", %{pool: name})}

        :exit, reason ->
          if Errors.shutdown_reason?(reason),
            do:
              {:error,
               Errors.shutdown("the pool stopped before the call got a worker", %{pool: name})},
            else:
              {:error,
               Error.pool_error("pool is not available: #{inspect(reason)}", %{pool: name})}
      end
    end
  end

  @doc false
  # Gives the slot back. `result` is the call's result, or `:cancel` when
  # the call may still run in the worker (it timed out, its stream was
  # abandoned, its transport failed): the pool then stops it first.
  @spec checkin(lease(), term()) :: :ok
  def checkin(lease, result) do
    Timings.record(lease.timings, :run, System.monotonic_time() - lease.leased_at)
    send(lease.pool_pid, {:checkin, lease.pool, lease.ref, checkin_outcome(result)})
    :ok
  end

  defp checkin_outcome(:cancel), do: :cancel

  defp checkin_outcome({:error, %Error{details: %{stop: stop}}})
       when stop in [:running, :unconfirmed],
       do: :cancel

  defp checkin_outcome({:error, %Error{category: :grpc_error, grpc_status: status}})
       when status in @transport_statuses,
       do: :cancel

  defp checkin_outcome({:error, _}), do: :error
  defp checkin_outcome(_ok), do: :ok
end
