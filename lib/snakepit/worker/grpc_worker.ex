defmodule Snakepit.GRPCWorker do
  @moduledoc """
  Owns one Python worker process for its whole life.

  It spawns the process through the native core (own session and process
  group, parent-death signal, guard), waits for the worker's readiness line
  `SNAKEPIT_READY <address>` (no fixed sleeps), opens the gRPC channel and
  tells its pool. Calls do not pass through this process: callers use the
  channel directly. When the Python process dies the worker stops
  abnormally and its `Snakepit.Pool.Worker.Starter` starts a fresh one; on
  shutdown it sends SIGTERM to the group, waits up to
  `graceful_shutdown_timeout_ms`, then SIGKILLs it.

  This module is the process and its state; its steps live beside it:
  `Snakepit.Worker.Launch` starts the Python process,
  `Snakepit.Worker.Handshake` connects once it is ready,
  `Snakepit.HeartbeatMonitor` watches it, `Snakepit.Worker.ExitReport`
  tells others when it fails or exits, `Snakepit.Worker.Standalone` starts
  a worker outside any pool, and `Snakepit.Worker.DirectCall` holds the
  one-worker call API below (upstream's, which bypasses the pool).
  """
  use GenServer, restart: :transient

  require Logger

  alias Snakepit.{Defaults, Error, Native, ProcessKiller, Telemetry}
  alias Snakepit.Pool.ProcessRegistry

  alias Snakepit.Worker.{
    DirectCall,
    ExitReport,
    ExitStatus,
    Handshake,
    Launch,
    Output,
    PythonLog
  }

  # Lines of output kept to explain a failed start.
  @kept_lines 30
  # How long to wait for the exit notice after SIGKILL.
  @kill_wait_ms 2_000
  # How long a worker whose lane closed waits for its Python process's exit
  # notice before it is replaced anyway.
  @lane_closed_grace_ms 1_000

  @doc """
  Starts one worker outside any pool, as upstream's
  `GRPCWorker.start_link(adapter: Snakepit.Adapters.GRPCPython)`, and
  returns once its Python process is ready: `{:ok, pid}` (linked to the
  caller) or `{:error, error}` (nothing left running). Call it with
  `execute/3-5`, `execute_stream/4-6` and the rest; it stops with its
  caller, or with `GenServer.stop/1`. Snakepit must be running.

  Options: `:adapter` (default `Snakepit.Adapters.GRPCPython`), `:id`,
  `:pool_name` (default `:standalone`), `:adapter_args`, `:adapter_env`,
  `:startup_timeout` (ms, default `Snakepit.Defaults.grpc_server_ready_timeout/0`),
  and `:worker_config` (further pool keys, e.g. `heartbeat:`); `:port` is accepted and
  ignored (workers take OS-assigned addresses).

  (Pools start their workers with a map of their own; that form is internal.)
  """
  @spec start_link(keyword() | map()) :: GenServer.on_start() | {:error, Error.t()}
  def start_link(opts) when is_list(opts), do: Snakepit.Worker.Standalone.start(opts)
  def start_link(args) when is_map(args), do: GenServer.start_link(__MODULE__, args)

  def start_link(other),
    do: invalid("expected start options (a keyword list), got: #{inspect(other)}")

  @doc """
  Supervisor shutdown time for a worker: the graceful shutdown window plus
  room for the SIGKILL that may follow it (`Snakepit.Defaults.shutdown_margin_ms/0`).
  """
  @spec supervisor_shutdown_timeout() :: pos_integer()
  def supervisor_shutdown_timeout,
    do: Defaults.graceful_shutdown_timeout_ms() + Defaults.shutdown_margin_ms()

  @doc "The worker's OS pid, channel, call lane (and its reader) and status."
  @spec get_info(pid()) :: map()
  def get_info(worker), do: GenServer.call(worker, :info)

  @doc """
  Kills the worker's Python process at once (SIGKILL to its group): the
  hard stop of a cancelled call that would not stop. The worker then ends
  with `{:shutdown, :hard_stop}` and its starter replaces it.
  """
  @spec hard_stop(pid()) :: :ok
  def hard_stop(worker), do: GenServer.cast(worker, :hard_stop)

  # -- calls on one worker (upstream's API) -----------------------------------

  @typedoc "A worker: its pid, or its id in `Snakepit.Pool.Registry`."
  @type worker_ref :: pid() | String.t()

  @typedoc """
  A connection to one worker, for `Snakepit.GRPC.Client.execute/3-4` and
  `Snakepit.Adapters.GRPCPython.grpc_execute/6`: its channel (and call
  lane, when it has one) held by the native core.
  """
  @type connection :: %{
          required(:id) => String.t(),
          required(:channel) => reference(),
          required(:lane) => reference() | nil,
          optional(atom()) => term()
        }

  @doc """
  Runs `command` on this one worker, from the calling process, straight
  through the native core (`Snakepit.GRPC.Client`), and returns what
  `Snakepit.execute/3` returns: `{:ok, result}` or `{:error, error}`.

  The fourth argument is a timeout in ms (or `:infinity`), options, or nil
  for the default `Snakepit.Defaults.grpc_worker_execute_timeout/0`.
  Options: `:timeout`, `:session_id`, `:metadata`, `:correlation_id`,
  `:binary_parameters`. A call that runs out of time is told to stop in
  the worker (an async tool is cancelled, a sync one gets `CallCancelled`
  raised), as a pool call is; unlike a pool call, a tool that ignores
  that is not killed, since no pool owns the slot.

  The call does not go through the pool: the worker may be busy with pool
  calls, and the pool's queueing, affinity and crash retries do not apply.
  `Snakepit.execute/3` is the usual way; this is for tools that address
  one worker (`Snakepit.Pool.list_workers/1`, `Snakepit.Pool.Registry`).
  A worker that is not running or not ready yet, and bad arguments, come
  back as `{:error, %Snakepit.Error{}}`.
  """
  @spec execute(worker_ref(), String.t(), map(), timeout() | keyword() | nil) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  defdelegate execute(worker, command, args, timeout_or_opts \\ nil), to: DirectCall

  @doc "`execute/4` with a timeout and options apart (`nil` timeout: the default)."
  @spec execute(worker_ref(), String.t(), map(), timeout() | nil, keyword()) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  defdelegate execute(worker, command, args, timeout, opts), to: DirectCall

  @doc """
  `execute/4` in the session `session_id`: the worker's Python side sees
  the session (its `session_context`), as with
  `Snakepit.execute_in_session/4`.
  """
  @spec execute_in_session(
          worker_ref(),
          String.t(),
          String.t(),
          map(),
          timeout() | keyword() | nil
        ) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  defdelegate execute_in_session(worker, session_id, command, args, timeout_or_opts \\ nil),
    to: DirectCall

  @doc "`execute_in_session/5` with a timeout and options apart."
  @spec execute_in_session(
          worker_ref(),
          String.t(),
          String.t(),
          map(),
          timeout() | nil,
          keyword()
        ) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  defdelegate execute_in_session(worker, session_id, command, args, timeout, opts),
    to: DirectCall

  @doc """
  Runs streaming `command` on this one worker, calling `callback_fn` with
  each chunk in the calling process (the chunk shape of
  `Snakepit.execute_stream/4`; `:halt` from the callback stops the
  stream). Returns `:ok` when the stream ends, or `{:error, error}`.
  Timeout, options and caveats as `execute/4`; the default timeout is
  `Snakepit.Defaults.grpc_worker_stream_timeout/0`.
  """
  @spec execute_stream(
          worker_ref(),
          String.t(),
          map(),
          (map() -> term()),
          timeout() | keyword() | nil
        ) ::
          :ok | {:error, Error.t() | Exception.t()}
  defdelegate execute_stream(worker, command, args, callback_fn, timeout_or_opts \\ nil),
    to: DirectCall

  @doc "`execute_stream/5` with a timeout and options apart."
  @spec execute_stream(
          worker_ref(),
          String.t(),
          map(),
          (map() -> term()),
          timeout() | nil,
          keyword()
        ) ::
          :ok | {:error, Error.t() | Exception.t()}
  defdelegate execute_stream(worker, command, args, callback_fn, timeout, opts),
    to: DirectCall

  @doc """
  The worker's connection, for `Snakepit.GRPC.Client.execute/3-4` and
  `Snakepit.Adapters.GRPCPython.grpc_execute/6`: `{:ok, connection}`, or
  `{:error, error}` when the worker is not running or not ready. Upstream
  returned a `GRPC.Channel`; here the channel lives in the native core and
  the connection is a map that holds it (see `t:connection/0`).
  """
  @spec get_channel(worker_ref()) :: {:ok, connection()} | {:error, Error.t()}
  defdelegate get_channel(worker), to: DirectCall, as: :connection

  @doc """
  The worker's health and statistics: `{:ok, map}` with `:healthy` (it is
  ready and its Python server answered a ping within `timeout_ms`),
  `:status`, `:worker_id`, `:pool_name`, `:os_pid`, `:address`,
  `:uptime_ms`, `:requests` (calls it has served through its pool),
  `:tainted` and `:ping_ms`; `{:error, error}` when it is not running.
  """
  @spec get_health(worker_ref(), pos_integer()) :: {:ok, map()} | {:error, Error.t()}
  def get_health(worker, timeout_ms \\ 5_000), do: DirectCall.health(worker, timeout_ms)

  @doc """
  The id of the worker's own session, `"<worker id>_session"`:
  `{:ok, session_id}`. Calls run in no session unless given one; pass
  this id to `execute_in_session/5` to keep Python-side session state on
  this worker. `{:error, error}` when the worker is not running.
  """
  @spec get_session_id(worker_ref()) :: {:ok, String.t()} | {:error, Error.t()}
  defdelegate get_session_id(worker), to: DirectCall, as: :session_id

  defp invalid(message), do: {:error, Error.validation_error(message)}

  # -- lifecycle -------------------------------------------------------------

  @impl true
  def init(args) do
    Process.flag(:trap_exit, true)

    state = %{
      id: args.id,
      pool_name: args.pool_name,
      pool_pid: args.pool_pid,
      starter: Map.get(args, :starter),
      config: Snakepit.Redact.unseal(args.config),
      status: :starting,
      os_pid: nil,
      handle: nil,
      channel: nil,
      lane: nil,
      lane_reader: nil,
      heartbeat_monitor: nil,
      address: nil,
      output: :queue.new(),
      output_log: Output.new(),
      startup_error: nil,
      oom_kills: nil,
      started_at: System.monotonic_time(),
      startup_timer: nil
    }

    {:ok, state, {:continue, :spawn}}
  end

  @impl true
  def handle_continue(:spawn, state) do
    case Launch.start(state.id, state.config) do
      {:ok, os_pid, handle} ->
        timer = Process.send_after(self(), :startup_timeout, state.config.startup_timeout)
        {:noreply, %{state | os_pid: os_pid, handle: handle, startup_timer: timer}}

      {:error, cause} ->
        fail_startup(state, cause)
    end
  end

  @impl true
  def handle_info({:snakepit_process, os_pid, {stream, _line} = event}, %{os_pid: os_pid} = state)
      when stream in [:stdout, :stderr] do
    handle_process_event(event, ack_output(state))
  end

  def handle_info({:snakepit_process, os_pid, event}, %{os_pid: os_pid} = state) do
    handle_process_event(event, state)
  end

  def handle_info(:report_output, state) do
    {count, output_log} = Output.take_report(state.output_log)

    if count > 0 do
      Telemetry.emit([:snakepit, :worker, :output_dropped], %{count: count}, %{
        worker_id: state.id,
        pool: state.pool_name
      })

      Snakepit.Logger.warning(
        :worker,
        "worker #{state.id}: #{count} lines of its output were dropped (more than " <>
          "#{Output.lines_per_second()} lines a second, or faster than they could be handled)"
      )
    end

    {:noreply, %{state | output_log: output_log}}
  end

  def handle_info(:startup_timeout, %{status: :starting} = state) do
    fail_startup(state, "worker did not report ready within #{state.config.startup_timeout} ms")
  end

  # An unresponsive Python process will not honour SIGTERM: kill its group
  # at once and stop abnormally so the starter replaces the worker.
  def handle_info({:EXIT, _monitor, :heartbeat_timeout}, state) do
    ExitReport.connection_lost(state, :heartbeat_timeout)
    {:stop, {:shutdown, :heartbeat_timeout}, kill(state)}
  end

  # The lane's reader ends normally when the lane closed: mostly because the
  # Python process is going, whose exit notice follows and stops this
  # worker with its exit status. A lane that closed while Python runs (the
  # worker sent a malformed or oversized message) leaves a worker every
  # call to fails at once: replaced once the grace has passed.
  def handle_info({:EXIT, reader, :normal}, %{lane_reader: reader} = state) when reader != nil do
    Process.send_after(self(), {:lane_closed, reader}, @lane_closed_grace_ms)
    {:noreply, state}
  end

  # Anything else leaves a worker nobody can call.
  def handle_info({:EXIT, reader, reason}, %{lane_reader: reader} = state) when reader != nil do
    ExitReport.connection_lost(state, :lane_reader_stopped)
    message = "worker #{state.id}: its call lane's reader stopped (#{inspect(reason)})"
    # Calls waiting on the lane hear it now, not at their deadlines.
    Native.lane_close(state.lane, message)
    Snakepit.Logger.error(:worker, message <> "; restarting it")
    {:stop, {:shutdown, {:lane_reader, reason}}, state}
  end

  def handle_info({:lane_closed, reader}, %{lane_reader: reader} = state) do
    ExitReport.connection_lost(state, :lane_closed)

    Snakepit.Logger.error(
      :worker,
      "worker #{state.id}: its call lane closed while its Python process runs; restarting it"
    )

    {:stop, {:shutdown, :lane_closed}, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp handle_process_event({:stdout, "SNAKEPIT_READY " <> ready}, %{status: :starting} = state) do
    case Handshake.connect(state, ready) do
      {:ok, connected} ->
        if state.startup_timer, do: Process.cancel_timer(state.startup_timer)
        heartbeat = start_heartbeat(state.id, connected.channel, state.config)

        state =
          Map.merge(state, connected)
          |> Map.merge(%{
            status: :ready,
            startup_timer: nil,
            heartbeat_monitor: heartbeat,
            # To tell an OOM kill from another SIGKILL when the process dies.
            oom_kills: Snakepit.Worker.OOMKills.count()
          })

        {:noreply, state}

      {:error, cause} ->
        fail_startup(state, cause)
    end
  end

  defp handle_process_event({:stderr, "SNAKEPIT_STARTUP_ERROR " <> message}, state) do
    message = Output.printable(message)
    {:noreply, keep_output(%{state | startup_error: message}, message)}
  end

  # Output is kept only to explain a failed start; once ready it is logged,
  # within Output's bounds.
  defp handle_process_event({stream, line}, %{status: :starting} = state)
       when stream in [:stdout, :stderr],
       do: {:noreply, keep_output(state, line)}

  defp handle_process_event({stream, line}, state) when stream in [:stdout, :stderr] do
    {verdict, output_log} = Output.admit(state.output_log, System.monotonic_time(:millisecond))

    if verdict == :log do
      {level, message, metadata} = PythonLog.entry(stream, line, state.id, state.pool_name)
      Logger.log(level, message, metadata)
    end

    {:noreply, note_dropped(%{state | output_log: output_log}, 0)}
  end

  defp handle_process_event({:exit, status}, %{status: :starting} = state) do
    cause = state.startup_error || "Python #{ExitStatus.describe(status)} during startup"

    # Killed from outside (not by its own failure) it is expected to start
    # next time; the exit status travels in the exit reason for the starter.
    status = if state.startup_error, do: {:exited, 2}, else: status
    fail_startup(%{state | os_pid: nil}, cause, status)
  end

  defp handle_process_event({:exit, status}, state) do
    status = ExitReport.python_exited(state, status)
    release(state)
    {:stop, {:shutdown, {:python_exited, status}}, %{state | os_pid: nil, handle: nil}}
  end

  # One output message handled: tell the native core, and learn how many
  # lines it dropped meanwhile.
  defp ack_output(%{handle: nil} = state), do: state

  defp ack_output(state),
    do: note_dropped(state, Native.process_output_ack(state.handle, 1, Output.window()))

  defp note_dropped(state, n) do
    {schedule?, output_log} = Output.schedule_report?(Output.dropped(state.output_log, n))
    if schedule?, do: Process.send_after(self(), :report_output, Output.report_interval_ms())
    %{state | output_log: output_log}
  end

  defp keep_output(state, line) do
    output = :queue.in(Output.printable(line), state.output)
    output = if :queue.len(output) > @kept_lines, do: :queue.drop(output), else: output
    %{state | output: output}
  end

  # After too many missed heartbeats (dependent mode) the monitor exits
  # this worker with :heartbeat_timeout, handled above.
  defp start_heartbeat(worker_id, channel, config) do
    case Snakepit.HeartbeatMonitor.start_for_worker(
           worker_id,
           channel,
           Map.get(config, :heartbeat, %{})
         ) do
      {:ok, monitor} -> monitor
      :disabled -> nil
    end
  end

  defp fail_startup(state, cause, status \\ nil) do
    ExitReport.startup_failed(state, cause, status)
    {:stop, {:shutdown, {:startup_failed, status || :error}}, stop_process(state)}
  end

  @impl true
  def handle_cast(:hard_stop, state) do
    ExitReport.connection_lost(state, :hard_stop)

    Snakepit.Logger.error(
      :worker,
      "worker #{state.id} (OS pid #{state.os_pid}) is killed: a cancelled call did not stop in time"
    )

    {:stop, {:shutdown, :hard_stop}, kill(state)}
  end

  # The config carries adapter_env (secrets), the last message may carry
  # output lines: neither goes into a crash report.
  @impl true
  def format_status(status), do: Snakepit.Redact.status(status)

  @impl true
  def handle_call(:info, _from, state) do
    {:reply,
     Map.take(state, [
       :id,
       :pool_name,
       :status,
       :os_pid,
       :address,
       :channel,
       :lane,
       :lane_reader,
       :started_at
     ]), state}
  end

  @impl true
  def terminate(reason, state) do
    # Stopped on purpose (its pool or Snakepit shutting down): recorded
    # first, so a call whose transport fails now reports a shutdown, not a
    # crash, and without waiting to find out.
    if reason in [:shutdown, :normal] and state.os_pid,
      do: ExitStatus.record(state.os_pid, :stopped)

    # Calls waiting on the lane hear it now (the reader closes it too, but
    # it may be killed with this process before it can).
    if state.lane, do: Native.lane_close(state.lane, "the worker #{state.id} stopped")
    stop_process(state)
    :ok
  end

  # SIGTERM to the group, wait for the exit notice, SIGKILL if it does not
  # come in time; then release the guard, which takes down anything left.
  defp stop_process(%{os_pid: nil} = state), do: release(state)

  defp stop_process(state) do
    ProcessKiller.kill_process_group(state.os_pid, :sigterm)

    if await_exit(state.os_pid, Defaults.graceful_shutdown_timeout_ms()),
      do: release(%{state | os_pid: nil}),
      else: kill(state)
  end

  # SIGKILL to the group at once, then release.
  defp kill(%{os_pid: nil} = state), do: release(state)

  defp kill(state) do
    ProcessKiller.kill_process_group(state.os_pid, :sigkill)
    await_exit(state.os_pid, @kill_wait_ms)
    release(%{state | os_pid: nil})
  end

  defp await_exit(pid, timeout) do
    receive do
      {:snakepit_process, ^pid, {:exit, _}} -> true
    after
      timeout -> false
    end
  end

  defp release(%{handle: nil} = state), do: state

  defp release(state) do
    Native.release_process(state.handle)
    ProcessRegistry.unregister_worker(state.id)
    %{state | handle: nil}
  end
end
