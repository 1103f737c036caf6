defmodule Snakepit.GRPC.Client do
  @moduledoc """
  Calls to one worker, made from the caller's own process: over the
  worker's call lane when it has one (`call_transport: :lane`), else over
  its gRPC channel. Either way the native core replies `{ref, result}` here
  and the reply becomes a result or a `Snakepit.Error`
  (`Snakepit.Transport.NativeCall`). Streams run in
  `Snakepit.Transport.StreamCall`. Cancellation, pings and sessions always
  use gRPC.
  """

  alias Snakepit.{Defaults, Error, Native, Telemetry}
  alias Snakepit.Transport.StreamCall
  alias Snakepit.Transport.NativeCall
  alias Snakepit.Pool.Deadline

  @execute_start [:snakepit, :grpc_worker, :execute, :start]
  @execute_stop [:snakepit, :grpc_worker, :execute, :stop]
  @call_start [:snakepit, :grpc, :call, :start]
  @call_stop [:snakepit, :grpc, :call, :stop]
  @call_exception [:snakepit, :grpc, :call, :exception]
  @call_events [@execute_start, @call_start, @execute_stop, @call_stop, @call_exception]

  @type worker :: %{
          required(:channel) => reference(),
          required(:id) => String.t(),
          optional(:lane) => reference() | nil,
          optional(atom()) => term()
        }

  @doc """
  Runs `tool` on `worker`. Options: `:deadline` (monotonic ms or
  `:infinity`), `:request_id` (names the call in the worker, so it can be
  stopped there), `:session_id`, `:metadata`, `:binary_parameters`, and
  how a call past its deadline is stopped: `:stop` (a function of no
  argument that stops it and returns `{:ok, stop}` as `cancel/3` does: a
  pooled call's, whose pool stops it), else `:stop_by` (a deadline until
  which this process waits to learn how the `cancel/3` it sends went: the
  caller's own deadline).

  When the worker does not answer by the deadline, the call is stopped
  and the error's `details.stop` says how (`cancel/3`).

  A Python exception comes back as one of the `Snakepit.Error.*` exception
  structs (see `Snakepit.Error.PythonTranslation`); an unknown tool, or a
  streaming tool called here, as a `:validation` `Snakepit.Error`.
  """
  @spec execute(worker(), String.t(), map(), keyword() | timeout() | nil) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute(worker, tool, args, opts_or_timeout)

  def execute(%{channel: channel, id: _} = worker, tool, args, opts)
      when is_reference(channel) and is_binary(tool) and is_map(args) and is_list(opts),
      do: run_execute(worker, tool, args, opts)

  # Upstream's channel-level form: a timeout (ms, :infinity, or nil for
  # grpc_client_execute_timeout) instead of options.
  def execute(connection, command, args, timeout)
      when is_nil(timeout) or is_integer(timeout) or timeout == :infinity do
    timeout = timeout || Defaults.grpc_client_execute_timeout()

    with :ok <- check_call(connection, command, args, timeout),
         do: run_execute(connection, command, args, direct_opts(timeout, []))
  end

  def execute(connection, command, args, other) do
    with :ok <- check_call(connection, command, args, :infinity, List.wrap(other)),
         do: invalid("expected options (a keyword list) or a timeout, got: #{inspect(other)}")
  end

  @doc """
  Upstream's `execute(channel, command, args)`: `execute/4` with the
  default timeout, `Snakepit.Defaults.grpc_client_execute_timeout/0`.
  `connection` comes from `Snakepit.GRPCWorker.get_channel/1` or
  `connect/1`.
  """
  @spec execute(worker(), String.t(), map()) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute(connection, command, args), do: execute(connection, command, args, nil)

  @doc """
  A connection to the worker server listening at `port` (an integer: a
  TCP port on `Snakepit.Defaults.tcp_host/0`) or at an address
  (`"unix:/path"`, `"host:port"`), checked with a ping: `{:ok, connection}`
  for `execute/3-4`, `execute_stream/5` and
  `Snakepit.Adapters.GRPCPython.grpc_execute/6`, or `{:error, error}`.
  Only servers started by this VM accept its calls.
  """
  @spec connect(non_neg_integer() | String.t()) :: {:ok, worker()} | {:error, Error.t()}
  def connect(port_or_address), do: connect(port_or_address, 5, 100)

  @doc false
  # A worker may print its readiness line a moment before its socket
  # accepts: a few pings, `interval_ms` apart.
  def connect(port_or_address, attempts, interval_ms) do
    with {:ok, address} <- address_of(port_or_address),
         {:ok, channel} <- open_channel(address) do
      connection = %{id: address, channel: channel, lane: nil, address: address}
      await_ping(connection, attempts, interval_ms)
    end
  end

  defp address_of(port) when is_integer(port) and port > 0 and port < 65_536,
    do: {:ok, "#{Defaults.tcp_host()}:#{port}"}

  defp address_of("unix:/" <> _ = address), do: {:ok, address}

  defp address_of(address) when is_binary(address) do
    if address =~ ~r/^[^\s\/]+:\d{1,5}$/,
      do: {:ok, address},
      else: {:error, Error.validation_error("not a worker address: #{inspect(address)}")}
  end

  defp address_of(other),
    do:
      {:error,
       Error.validation_error(
         "a worker address is a port (1..65535), \"unix:/path\" or \"host:port\", got: " <>
           inspect(other)
       )}

  defp open_channel(address) do
    case Native.grpc_connect(address) do
      {:ok, channel} ->
        {:ok, channel}

      {:error, reason} ->
        {:error, Error.worker_error("cannot connect to #{address}: #{inspect(reason)}")}
    end
  end

  defp await_ping(connection, attempts, interval_ms) do
    case ping(connection, 2_000) do
      {:ok, _} ->
        {:ok, connection}

      {:error, _} when attempts > 1 ->
        Process.sleep(interval_ms)
        await_ping(connection, attempts - 1, interval_ms)

      {:error, error} ->
        {:error, error}
    end
  end

  @doc false
  # Options of a direct call (no pool) with total budget `timeout`: the
  # whole budget is the call's, and a call past it is stopped in the worker.
  def direct_opts(timeout, opts) do
    deadline = if timeout == :infinity, do: :infinity, else: Deadline.now() + timeout

    opts
    |> Keyword.take([:session_id, :metadata, :binary_parameters, :correlation_id])
    |> Keyword.merge(
      deadline: deadline,
      stop_by: deadline,
      request_id: Integer.to_string(System.unique_integer([:positive]))
    )
  end

  @doc false
  # The checks of a call made on a connection, in the caller: `:ok` or a
  # `:validation` error naming what is wrong.
  def check_call(connection, command, args, timeout, opts \\ []) do
    cond do
      not match?(%{channel: ref, id: _} when is_reference(ref), connection) ->
        invalid(
          "not a worker connection (use Snakepit.GRPCWorker.get_channel/1 or " <>
            "Snakepit.GRPC.Client.connect/1): #{inspect(connection)}"
        )

      not is_binary(command) or command == "" ->
        invalid("command must be a non-empty string, got: #{inspect(command)}")

      not is_map(args) ->
        invalid("args must be a map, got: #{inspect(args)}")

      not (timeout == :infinity or (is_integer(timeout) and timeout > 0)) ->
        invalid("timeout must be a positive integer or :infinity, got: #{inspect(timeout)}")

      not Keyword.keyword?(opts) ->
        invalid("options must be a keyword list, got: #{inspect(opts)}")

      true ->
        :ok
    end
  end

  defp invalid(message), do: {:error, Error.validation_error(message)}

  defp run_execute(worker, tool, args, opts) do
    call_opts = NativeCall.options(opts)
    run_call(worker, tool, args, call_opts, Keyword.get(opts, :correlation_id), opts)
  end

  @doc false
  # A pooled call (`Snakepit.Pool.Call`): its native options already built
  # (`NativeCall.options/1`'s shape), its correlation id, and `stop`, the
  # function that stops it when its worker does not answer in time.
  @spec execute_leased(worker(), String.t(), map(), map(), String.t() | nil, (-> term())) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute_leased(worker, tool, args, call_opts, correlation_id, stop),
    do: run_call(worker, tool, args, call_opts, correlation_id, stop: stop)

  # `stop_opts`: how a call past its deadline is stopped (`stopper/2`).
  defp run_call(worker, tool, args, call_opts, correlation_id, stop_opts) do
    ref = make_ref()
    started = :erlang.monotonic_time()
    # Events are built only when someone listens: one lookup when no one
    # listens to any of them.
    if Telemetry.any_handled?(@call_events), do: emit_start(worker, tool, correlation_id)

    result =
      case start_call(worker, ref, tool, args, call_opts) do
        {:ok, call} ->
          case await_call(call, ref, call_opts.timeout_ms) do
            {:error, {:timeout, _}} -> timed_out(worker, tool, stop_opts)
            reply -> NativeCall.translate(reply, tool, worker)
          end

        {:error, {:invalid_argument, message}} ->
          {:error, NativeCall.invalid_args(tool, message)}

        {:error, _} = error ->
          NativeCall.translate(error, tool, worker)
      end

    if Telemetry.any_handled?(@call_events),
      do: emit_stop(worker, tool, correlation_id, started, result)

    result
  end

  defp execute_meta(worker, tool, correlation_id) do
    %{
      command: tool,
      worker_id: worker.id,
      transport: NativeCall.transport(worker),
      correlation_id: correlation_id
    }
  end

  defp emit_start(worker, tool, correlation_id) do
    if Telemetry.handled?(@execute_start) or Telemetry.handled?(@call_start) do
      start = %{system_time: System.system_time()}
      meta = execute_meta(worker, tool, correlation_id)
      Telemetry.emit([:snakepit, :grpc_worker, :execute, :start], start, meta)
      # The older guide's name for the same moment.
      Telemetry.emit([:snakepit, :grpc, :call, :start], start, meta)
    end
  end

  defp emit_stop(worker, tool, correlation_id, started, result) do
    if Telemetry.handled?(@execute_stop) or Telemetry.handled?(@call_stop) or
         Telemetry.handled?(@call_exception) do
      emit_stop_now(worker, tool, correlation_id, started, result)
    end
  end

  defp emit_stop_now(worker, tool, correlation_id, started, result) do
    duration = :erlang.monotonic_time() - started

    measurements = %{
      duration: duration,
      duration_ms: System.convert_time_unit(duration, :native, :millisecond)
    }

    meta = Map.put(execute_meta(worker, tool, correlation_id), :success, match?({:ok, _}, result))

    Telemetry.emit([:snakepit, :grpc_worker, :execute, :stop], measurements, meta)

    # The older guide's names for the same moment.
    case result do
      {:ok, _} ->
        Telemetry.emit([:snakepit, :grpc, :call, :stop], measurements, meta)

      {:error, error} ->
        Telemetry.emit(
          [:snakepit, :grpc, :call, :exception],
          measurements,
          Map.merge(meta, %{kind: :error, reason: error})
        )
    end
  end

  @doc """
  Runs streaming `tool`, calling `callback` with each chunk as a map with
  `"is_final"`. The callback returning `:halt` stops the stream and the
  Python producer. At most `stream_window` chunks are ever in flight.
  """
  @spec execute_stream(worker(), String.t(), map(), (map() -> term()), keyword()) ::
          :ok | {:error, Error.t() | Exception.t()}
  def execute_stream(worker, tool, args, callback, opts) do
    {result, _ended} = StreamCall.run(worker, tool, args, callback, opts)
    result
  end

  # NativeCall.send_encoded/2, without building its function on every call.
  defp start_call(worker, ref, tool, args, opts) do
    case send_call(worker, ref, tool, args, opts) do
      {:error, {:struct_value, _}} ->
        NativeCall.send_converted(args, &send_call(worker, ref, tool, &1, opts))

      started ->
        started
    end
  end

  defp send_call(%{lane: lane}, ref, tool, args, opts) when lane != nil do
    with {:ok, id} <- Native.lane_execute(lane, self(), ref, tool, args, opts),
         do: {:ok, {:lane, lane, id}}
  end

  defp send_call(worker, ref, tool, args, opts) do
    with :ok <- Native.grpc_execute(worker.channel, self(), ref, tool, args, opts),
         do: {:ok, :grpc}
  end

  # The native core answers a gRPC call by its deadline; a lane call is
  # waited for here, to the deadline, and forgotten when it passes.
  defp await_call(:grpc, ref, timeout_ms), do: NativeCall.await(ref, timeout_ms)

  defp await_call({:lane, lane, id}, ref, timeout_ms) do
    receive do
      {^ref, reply} -> reply
    after
      lane_wait(timeout_ms) ->
        Native.lane_forget(lane, id)

        # A reply that arrived meanwhile is still the call's answer.
        receive do
          {^ref, reply} -> reply
        after
          0 -> {:error, {:timeout, "no reply by the call's deadline"}}
        end
    end
  end

  defp lane_wait(0), do: :infinity
  defp lane_wait(timeout_ms), do: timeout_ms

  @doc """
  Asks `worker` to stop the call `request_id` and waits up to `wait_ms` for
  it to end. `{:ok, stop}` where `stop` is `:cancelled` (an async tool's
  task was cancelled), `:interrupted` (a sync tool was stopped by
  `CallCancelled` raised in its thread, or a sync stream's producer by
  `StreamCancelled` once its consumer halted or went away), `:finished` (it ended by itself),
  `:not_running` (no such call: it ended long ago or never arrived, and
  will not run) or `:running` (still running after `wait_ms`: a hard stop
  follows); `{:error, error}` when the worker cannot be asked.
  """
  @spec cancel(worker(), String.t(), non_neg_integer()) :: {:ok, atom()} | {:error, Error.t()}
  def cancel(worker, request_id, wait_ms) do
    ref = make_ref()
    :ok = Native.grpc_cancel(worker.channel, self(), ref, request_id, wait_ms)

    case NativeCall.await(ref, wait_ms + 1_000) do
      {:ok, state} -> {:ok, stop_state(state)}
      error -> NativeCall.translate(error, "CancelTool", worker)
    end
  end

  @doc false
  # The worker's answer to CancelTool, as an atom (from a fixed table: no
  # atom is made from data).
  def stop_state("cancelled"), do: :cancelled
  def stop_state("interrupted"), do: :interrupted
  def stop_state("finished"), do: :finished
  def stop_state("unknown"), do: :not_running
  def stop_state(_running), do: :running

  # The worker did not answer by the call's deadline: stop the call and
  # say how it stopped. A pooled call is stopped by its pool (`:stop`): it
  # holds the worker's slot and replaces a worker whose call will not stop.
  # A call made without a pool is stopped here, with one CancelTool.
  defp timed_out(worker, tool, opts) do
    details = %{tool: tool, worker_id: worker.id}

    stop =
      case stopper(worker, opts) do
        nil ->
          :unconfirmed

        stop_call ->
          case stop_call.() do
            {:ok, stop} -> stop
            {:error, _} -> :unconfirmed
          end
      end

    {:error,
     Error.timeout_error(
       "#{tool} did not finish in time; #{describe_stop(stop)}",
       Map.put(details, :stop, stop)
     )}
  end

  defp stopper(worker, opts) do
    stop_call = Keyword.get(opts, :stop)
    request_id = Keyword.get(opts, :request_id)

    cond do
      is_function(stop_call, 0) -> stop_call
      is_binary(request_id) -> fn -> cancel(worker, request_id, stop_wait(opts)) end
      true -> nil
    end
  end

  # What is left of the caller's budget, at most cancel_grace_ms.
  defp stop_wait(opts) do
    grace = Defaults.cancel_grace_ms()

    case Keyword.get(opts, :stop_by, :infinity) do
      :infinity -> grace
      stop_by -> min(grace, Deadline.remaining(stop_by))
    end
  end

  defp describe_stop(:cancelled), do: "the tool was cancelled"

  defp describe_stop(:interrupted),
    do: "the tool was stopped (CallCancelled raised in its thread)"

  defp describe_stop(:finished), do: "the tool finished anyway; its result is dropped"
  defp describe_stop(:not_running), do: "the tool is not running"

  defp describe_stop(_running),
    do:
      "the tool is still running; its worker is killed and replaced unless it stops " <>
        "within cancel_grace_ms (#{Defaults.cancel_grace_ms()} ms)"

  @doc """
  Pings the worker's gRPC server: `{:ok, echo}` with what it answered.
  The second argument is a timeout (ms, default 5000) or, as upstream's
  `ping(channel, message, opts)`, the message to send; `opts` may give
  `:timeout`.
  """
  @spec ping(worker(), non_neg_integer() | String.t(), keyword()) ::
          {:ok, String.t()} | {:error, Error.t()}
  def ping(worker, timeout_or_message \\ 5_000, opts \\ [])

  def ping(worker, timeout_ms, opts) when is_integer(timeout_ms) and timeout_ms >= 0,
    do: ping(worker, "ping", Keyword.put(List.wrap(opts), :timeout, timeout_ms))

  def ping(%{channel: channel} = worker, message, opts)
      when is_reference(channel) and is_binary(message) and is_list(opts) do
    case Keyword.get(opts, :timeout, 5_000) do
      timeout_ms when is_integer(timeout_ms) and timeout_ms >= 0 ->
        ref = make_ref()
        :ok = Native.grpc_ping(channel, self(), ref, message, timeout_ms)
        ref |> NativeCall.await(timeout_ms) |> NativeCall.translate("ping", worker)

      other ->
        invalid("timeout must be a non-negative integer (ms), got: #{inspect(other)}")
    end
  end

  def ping(worker, message, opts) do
    with :ok <- check_call(worker, "ping", %{}, :infinity, List.wrap(opts)),
         do: invalid("message must be a string, got: #{inspect(message)}")
  end
end
