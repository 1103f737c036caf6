defmodule Snakepit.Worker.DirectCall do
  @moduledoc """
  Calls on one worker that do not go through its pool: the bodies of
  `Snakepit.GRPCWorker`'s upstream API (`execute/4`, `execute_stream/5`,
  `get_channel/1`, `get_health/2`, ...), documented there.

  Arguments are checked in the calling process before the worker is asked
  for its connection; the call then runs from the caller, straight through
  the native core (`Snakepit.GRPC.Client`).
  """

  alias Snakepit.{Defaults, Error, GRPCWorker}
  alias Snakepit.GRPC.Client

  @doc "See `Snakepit.GRPCWorker.execute/4`."
  @spec execute(GRPCWorker.worker_ref(), String.t(), map(), timeout() | keyword() | nil) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute(worker, command, args, timeout_or_opts) do
    with {:ok, timeout, opts} <- split(timeout_or_opts, &Defaults.grpc_worker_execute_timeout/0),
         do: execute(worker, command, args, timeout, opts)
  end

  @doc "See `Snakepit.GRPCWorker.execute/5`."
  @spec execute(GRPCWorker.worker_ref(), String.t(), map(), timeout() | nil, keyword()) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute(worker, command, args, timeout, opts) do
    timeout = if timeout == nil, do: Defaults.grpc_worker_execute_timeout(), else: timeout

    with {:ok, connection} <- checked_connection(worker, command, args, timeout, opts),
         do: Client.execute(connection, command, args, Client.direct_opts(timeout, opts))
  end

  @doc "See `Snakepit.GRPCWorker.execute_in_session/5`."
  @spec execute_in_session(
          GRPCWorker.worker_ref(),
          String.t(),
          String.t(),
          map(),
          timeout() | keyword() | nil
        ) :: {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute_in_session(worker, session_id, command, args, timeout_or_opts) do
    with {:ok, timeout, opts} <- split(timeout_or_opts, &Defaults.grpc_worker_execute_timeout/0),
         do: execute_in_session(worker, session_id, command, args, timeout, opts)
  end

  @doc "See `Snakepit.GRPCWorker.execute_in_session/6`."
  @spec execute_in_session(
          GRPCWorker.worker_ref(),
          String.t(),
          String.t(),
          map(),
          timeout() | nil,
          keyword()
        ) :: {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute_in_session(worker, session_id, command, args, timeout, opts) do
    with :ok <- check_session(session_id),
         do: execute(worker, command, args, timeout, put_session(opts, session_id))
  end

  @doc "See `Snakepit.GRPCWorker.execute_stream/5`."
  @spec execute_stream(
          GRPCWorker.worker_ref(),
          String.t(),
          map(),
          (map() -> term()),
          timeout() | keyword() | nil
        ) :: :ok | {:error, Error.t() | Exception.t()}
  def execute_stream(worker, command, args, callback_fn, timeout_or_opts) do
    with {:ok, timeout, opts} <- split(timeout_or_opts, &Defaults.grpc_worker_stream_timeout/0),
         do: execute_stream(worker, command, args, callback_fn, timeout, opts)
  end

  @doc "See `Snakepit.GRPCWorker.execute_stream/6`."
  @spec execute_stream(
          GRPCWorker.worker_ref(),
          String.t(),
          map(),
          (map() -> term()),
          timeout() | nil,
          keyword()
        ) :: :ok | {:error, Error.t() | Exception.t()}
  def execute_stream(worker, command, args, callback_fn, timeout, opts) do
    timeout = if timeout == nil, do: Defaults.grpc_worker_stream_timeout(), else: timeout

    with :ok <- check_callback(callback_fn),
         {:ok, connection} <- checked_connection(worker, command, args, timeout, opts) do
      Client.execute_stream(
        connection,
        command,
        args,
        callback_fn,
        Client.direct_opts(timeout, opts)
      )
    end
  end

  @doc "See `Snakepit.GRPCWorker.get_channel/1`."
  @spec connection(GRPCWorker.worker_ref()) ::
          {:ok, GRPCWorker.connection()} | {:error, Error.t()}
  def connection(worker) do
    with {:ok, pid} <- resolve(worker),
         {:ok, info} <- call_info(pid) do
      case info do
        %{status: :ready, channel: channel} when channel != nil ->
          {:ok,
           %{
             id: info.id,
             pid: pid,
             channel: channel,
             lane: info.lane,
             os_pid: info.os_pid,
             address: info.address
           }}

        _ ->
          {:error,
           Error.worker_error("worker #{info.id} is not ready yet (#{info.status})", %{
             worker_id: info.id
           })}
      end
    end
  end

  @doc "See `Snakepit.GRPCWorker.get_health/2`."
  @spec health(GRPCWorker.worker_ref(), pos_integer()) :: {:ok, map()} | {:error, Error.t()}
  def health(worker, timeout_ms) do
    with {:ok, pid} <- resolve(worker),
         {:ok, info} <- call_info(pid) do
      {healthy, ping_ms} = ping_health(info, timeout_ms)

      {:ok,
       %{
         healthy: healthy,
         status: info.status,
         worker_id: info.id,
         pool_name: info.pool_name,
         os_pid: info.os_pid,
         address: info.address,
         uptime_ms: elapsed_ms(info.started_at),
         requests: Snakepit.Worker.LifecycleManager.request_count(info.id),
         tainted: Snakepit.Worker.TaintRegistry.worker_tainted?(info.id),
         ping_ms: ping_ms
       }}
    end
  end

  @doc "See `Snakepit.GRPCWorker.get_session_id/1`."
  @spec session_id(GRPCWorker.worker_ref()) :: {:ok, String.t()} | {:error, Error.t()}
  def session_id(worker) do
    with {:ok, pid} <- resolve(worker),
         {:ok, info} <- call_info(pid),
         do: {:ok, info.id <> "_session"}
  end

  defp ping_health(%{status: :ready} = info, timeout_ms) do
    started = System.monotonic_time()

    case Client.ping(%{id: info.id, channel: info.channel}, timeout_ms) do
      {:ok, _} -> {true, elapsed_ms(started)}
      {:error, _} -> {false, nil}
    end
  end

  defp ping_health(_info, _timeout_ms), do: {false, nil}

  defp elapsed_ms(since),
    do: System.convert_time_unit(System.monotonic_time() - since, :native, :millisecond)

  # The 4th argument of the upstream forms: a timeout, options or nil.
  defp split(nil, default), do: {:ok, default.(), []}

  defp split(timeout, _default) when is_integer(timeout) or timeout == :infinity,
    do: {:ok, timeout, []}

  defp split(opts, default) when is_list(opts) do
    if Keyword.keyword?(opts),
      do: {:ok, Keyword.get_lazy(opts, :timeout, default), opts},
      else: invalid("options must be a keyword list, got: #{inspect(opts)}")
  end

  defp split(other, _default),
    do: invalid("expected a timeout (ms or :infinity), options or nil, got: #{inspect(other)}")

  defp check_session(id) when is_binary(id) and id != "", do: :ok

  defp check_session(id),
    do: invalid("session_id must be a non-empty string, got: #{inspect(id)}")

  defp put_session(opts, session_id) when is_list(opts),
    do: Keyword.put(opts, :session_id, session_id)

  defp put_session(opts, _session_id), do: opts

  defp check_callback(fun) when is_function(fun, 1), do: :ok

  defp check_callback(other),
    do: invalid("callback must be a function of arity 1, got: #{inspect(other)}")

  # Arguments checked before the worker is asked for its connection.
  defp checked_connection(worker, command, args, timeout, opts) do
    probe = %{id: "", channel: make_ref()}

    with :ok <- Client.check_call(probe, command, args, timeout, opts),
         do: connection(worker)
  end

  defp resolve(pid) when is_pid(pid), do: {:ok, pid}

  defp resolve(worker_id) when is_binary(worker_id) do
    case Snakepit.Pool.Registry.get_worker_pid(worker_id) do
      {:ok, pid} ->
        {:ok, pid}

      {:error, :not_found} ->
        {:error,
         Error.worker_error("no ready worker #{inspect(worker_id)}", %{worker_id: worker_id})}
    end
  catch
    # The registry is not running: Snakepit is not started.
    :error, _ -> {:error, Error.worker_error("Snakepit is not running", %{worker_id: worker_id})}
  end

  defp resolve(other),
    do: invalid("a worker is a pid or a worker id, got: #{inspect(other)}")

  defp call_info(pid) do
    {:ok, GRPCWorker.get_info(pid)}
  catch
    :exit, reason ->
      {:error,
       Error.worker_error("worker #{inspect(pid)} is not running", %{
         worker: pid,
         reason: exit_reason(reason)
       })}
  end

  defp exit_reason({reason, {GenServer, :call, _}}), do: reason
  defp exit_reason(reason), do: reason

  defp invalid(message), do: {:error, Error.validation_error(message)}
end
