defmodule Snakepit.Pool.Checkout do
  @moduledoc """
  The caller's side of a lease, in the caller's own process: finding the
  pool process (`resolve_pool/1`), leasing a worker slot from it
  (`checkout/2`), giving the slot back (`checkin/2`), asking the pool to
  stop a call that timed out and hearing how it stopped (`stop/2`), and
  telling a worker that died under a call from a transport failure
  (`confirm_crash/2`). `Snakepit.Pool.Call` and `Snakepit.Pool.Batching`
  run their calls on the leases it hands out.
  """

  alias Snakepit.{Defaults, Error}
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.Pool.{Deadline, Errors, Timings}
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
    with {:ok, pid, name} <- resolve_pool(opts), do: checkout(pid, name, opts, deadline)
  end

  @doc false
  # `checkout/2` from the pool process `pid` serving `name`
  # (`resolve_pool/1`'s answer).
  @spec checkout(pid(), atom() | nil, keyword(), integer() | :infinity) ::
          {:ok, lease()} | {:error, Error.t()}
  def checkout(pid, name, opts, deadline) do
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
            {:error, Error.pool_error("pool is not available: #{inspect(reason)}", %{pool: name})}
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

  @doc false
  # Asks the pool to stop the call of `lease`, which timed out and may
  # still run in its worker (the pool owns stopping a call: see
  # Snakepit.Pool.Leases), and waits until `stop_by` (the caller's own
  # deadline) to hear how it stopped: `{:ok, stop}` as
  # Snakepit.GRPC.Client.cancel/3 says it, `:running` when the worker has
  # not said by then (the pool kills it unless it stops within
  # cancel_grace_ms), `:unconfirmed` when the pool is gone.
  @spec stop(lease(), Deadline.t()) :: {:ok, atom()}
  def stop(lease, stop_by) do
    # The monitor's alias takes the answer: once this caller gave up, a
    # late one is dropped by the runtime, never left in the mailbox.
    mref = :erlang.monitor(:process, lease.pool_pid, [{:alias, :reply_demonitor}])
    send(lease.pool_pid, {:stop, lease.pool, lease.ref, mref})

    receive do
      {^mref, stop} ->
        {:ok, stop}

      {:DOWN, ^mref, :process, _, _} ->
        {:ok, :unconfirmed}
    after
      wait(stop_by) ->
        Process.demonitor(mref, [:flush])

        # An answer that arrived meanwhile still counts.
        receive do
          {^mref, stop} -> {:ok, stop}
        after
          0 -> {:ok, :running}
        end
    end
  end

  defp wait(:infinity), do: :infinity
  defp wait(stop_by), do: Deadline.remaining(stop_by)
end
