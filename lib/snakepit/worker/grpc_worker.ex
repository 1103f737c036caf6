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
  """
  use GenServer, restart: :transient

  require Logger

  alias Snakepit.{Config, Defaults, Error, Native, PythonRuntime, RunID, RuntimeDir}
  alias Snakepit.Worker.{ExitStatus, Output, PythonLog}
  alias Snakepit.GRPC.Client
  alias Snakepit.Telemetry
  alias Snakepit.Pool.ProcessRegistry
  alias Snakepit.ProcessKiller

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
  def start_link(opts) when is_list(opts), do: start_standalone(opts)
  def start_link(args) when is_map(args), do: GenServer.start_link(__MODULE__, args)

  def start_link(other),
    do: invalid("expected start options (a keyword list), got: #{inspect(other)}")

  defp start_standalone(opts) do
    with :ok <- keyword(opts),
         {:ok, config} <- standalone_config(opts) do
      id = Keyword.get(opts, :id) || "standalone_#{System.unique_integer([:positive])}"
      args = %{id: id, pool_name: config.name, pool_pid: nil, starter: self(), config: config}

      # Unlinked until ready, so a failed start is an error, not an exit.
      case GenServer.start(__MODULE__, args) do
        {:ok, pid} ->
          await_standalone(pid, config.startup_timeout + 5_000)

        {:error, reason} ->
          {:error, Error.worker_error("cannot start the worker: #{inspect(reason)}")}
      end
    end
  end

  defp stop_quietly(pid) do
    GenServer.stop(pid, :shutdown)
  catch
    :exit, _ -> :ok
  end

  # `:port` is accepted and ignored: ports are assigned by the OS here.
  @standalone_opts [
    :adapter,
    :id,
    :pool_name,
    :adapter_args,
    :adapter_env,
    :startup_timeout,
    :worker_config,
    :port
  ]

  defp keyword(opts) do
    cond do
      not Keyword.keyword?(opts) ->
        invalid("options must be a keyword list, got: #{inspect(opts)}")

      (unknown = Keyword.keys(opts) -- @standalone_opts) != [] ->
        invalid(
          "unknown start option #{inspect(hd(unknown))}; known: " <>
            Enum.map_join(@standalone_opts, ", ", &inspect/1)
        )

      true ->
        :ok
    end
  end

  defp standalone_config(opts) do
    pool =
      opts
      |> Keyword.get(:worker_config, %{})
      |> Map.new()
      |> Map.merge(
        opts
        |> Keyword.take([:adapter_args, :adapter_env, :startup_timeout])
        |> Map.new()
      )
      |> Map.put(:adapter_module, Keyword.get(opts, :adapter, Snakepit.Adapters.GRPCPython))
      |> Map.put(:name, Keyword.get(opts, :pool_name, :standalone))

    case Config.validate_pool_config(pool) do
      {:ok, config} -> {:ok, config}
      {:error, {_kind, message}} -> invalid(message)
    end
  end

  defp await_standalone(pid, timeout) do
    ref = Process.monitor(pid)

    receive do
      {:snakepit_worker_ready, ^pid} ->
        Process.demonitor(ref, [:flush])
        Process.link(pid)
        {:ok, pid}

      {:snakepit_worker_failed, ^pid, error} ->
        Process.demonitor(ref, [:flush])
        {:error, error}

      {:DOWN, ^ref, :process, ^pid, reason} ->
        {:error,
         Error.worker_error("the worker failed to start: #{inspect(reason)}", %{reason: reason})}
    after
      timeout ->
        Process.demonitor(ref, [:flush])
        stop_quietly(pid)
        {:error, Error.timeout_error("the worker did not start within #{timeout} ms")}
    end
  end

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
  def execute(worker, command, args, timeout_or_opts \\ nil) do
    with {:ok, timeout, opts} <- split(timeout_or_opts, &Defaults.grpc_worker_execute_timeout/0),
         do: execute(worker, command, args, timeout, opts)
  end

  @doc "`execute/4` with a timeout and options apart (`nil` timeout: the default)."
  @spec execute(worker_ref(), String.t(), map(), timeout() | nil, keyword()) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def execute(worker, command, args, timeout, opts) do
    timeout = if timeout == nil, do: Defaults.grpc_worker_execute_timeout(), else: timeout

    with {:ok, connection} <- checked_connection(worker, command, args, timeout, opts),
         do: Client.execute(connection, command, args, Client.direct_opts(timeout, opts))
  end

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
  def execute_in_session(worker, session_id, command, args, timeout_or_opts \\ nil) do
    with {:ok, timeout, opts} <- split(timeout_or_opts, &Defaults.grpc_worker_execute_timeout/0),
         do: execute_in_session(worker, session_id, command, args, timeout, opts)
  end

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
  def execute_in_session(worker, session_id, command, args, timeout, opts) do
    with :ok <- check_session(session_id),
         do: execute(worker, command, args, timeout, put_session(opts, session_id))
  end

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
  def execute_stream(worker, command, args, callback_fn, timeout_or_opts \\ nil) do
    with {:ok, timeout, opts} <- split(timeout_or_opts, &Defaults.grpc_worker_stream_timeout/0),
         do: execute_stream(worker, command, args, callback_fn, timeout, opts)
  end

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

  @doc """
  The worker's connection, for `Snakepit.GRPC.Client.execute/3-4` and
  `Snakepit.Adapters.GRPCPython.grpc_execute/6`: `{:ok, connection}`, or
  `{:error, error}` when the worker is not running or not ready. Upstream
  returned a `GRPC.Channel`; here the channel lives in the native core and
  the connection is a map that holds it (see `t:connection/0`).
  """
  @spec get_channel(worker_ref()) :: {:ok, connection()} | {:error, Error.t()}
  def get_channel(worker), do: connection(worker)

  @doc """
  The worker's health and statistics: `{:ok, map}` with `:healthy` (it is
  ready and its Python server answered a ping within `timeout_ms`),
  `:status`, `:worker_id`, `:pool_name`, `:os_pid`, `:address`,
  `:uptime_ms`, `:requests` (calls it has served through its pool),
  `:tainted` and `:ping_ms`; `{:error, error}` when it is not running.
  """
  @spec get_health(worker_ref(), pos_integer()) :: {:ok, map()} | {:error, Error.t()}
  def get_health(worker, timeout_ms \\ 5_000) do
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
         uptime_ms:
           System.convert_time_unit(
             System.monotonic_time() - info.started_at,
             :native,
             :millisecond
           ),
         requests: Snakepit.Worker.LifecycleManager.request_count(info.id),
         tainted: Snakepit.Worker.TaintRegistry.worker_tainted?(info.id),
         ping_ms: ping_ms
       }}
    end
  end

  @doc """
  The id of the worker's own session, `"<worker id>_session"`:
  `{:ok, session_id}`. Calls run in no session unless given one; pass
  this id to `execute_in_session/5` to keep Python-side session state on
  this worker. `{:error, error}` when the worker is not running.
  """
  @spec get_session_id(worker_ref()) :: {:ok, String.t()} | {:error, Error.t()}
  def get_session_id(worker) do
    with {:ok, pid} <- resolve(worker),
         {:ok, info} <- call_info(pid),
         do: {:ok, info.id <> "_session"}
  end

  defp ping_health(%{status: :ready} = info, timeout_ms) do
    started = System.monotonic_time()

    case Client.ping(%{id: info.id, channel: info.channel}, timeout_ms) do
      {:ok, _} ->
        {true, System.convert_time_unit(System.monotonic_time() - started, :native, :millisecond)}

      {:error, _} ->
        {false, nil}
    end
  end

  defp ping_health(_info, _timeout_ms), do: {false, nil}

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

  defp connection(worker) do
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
    {:ok, GenServer.call(pid, :info, 5_000)}
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
    # The pool's adapter_module decides how the worker's process starts.
    adapter = state.config.adapter_module

    with {:ok, slot_env} <- slot_env(state.config),
         {:ok, python} <- Snakepit.Adapter.executable(adapter),
         argv = [
           python | Snakepit.Adapter.argv(adapter, state.config.adapter_args, identity(state))
         ],
         env = PythonRuntime.worker_env(with_slot_env(state.config.adapter_env, slot_env)),
         # Recorded before the spawn, so a crash right after still leaves a trace.
         :ok <- ProcessRegistry.reserve_worker(state.id),
         {:ok, {os_pid, handle}} <- spawn(python, argv, env, slot_env, state.config) do
      # From now on at most Output.window() output lines are in flight to
      # this process; the native core drops (and counts) the rest.
      _ = Native.process_output_ack(handle, 0, Output.window())
      :ok = ProcessRegistry.activate_worker(state.id, self(), os_pid, RunID.current())
      timer = Process.send_after(self(), :startup_timeout, state.config.startup_timeout)
      {:noreply, %{state | os_pid: os_pid, handle: handle, startup_timer: timer}}
    else
      {:error, {:slot_env, message}} -> fail_startup(state, message)
      {:error, reason} -> fail_startup(state, "cannot start Python: #{format_reason(reason)}")
    end
  end

  # The slot's own variables (Snakepit.Worker.SlotEnv), asked at every
  # start, so a restarted worker gets its slot's environment again.
  defp slot_env(config) do
    case Snakepit.Worker.SlotEnv.resolve(config, Map.get(config, :slot_index)) do
      {:ok, env} -> {:ok, env}
      {:error, message} -> {:error, {:slot_env, message}}
    end
  end

  defp with_slot_env(env, []), do: env

  defp with_slot_env(env, slot_env),
    do: Enum.reject(env, fn {k, _} -> List.keymember?(slot_env, k, 0) end) ++ slot_env

  defp spawn(python, argv, env, slot_env, config) do
    # Off only in tests that must leave orphans behind on purpose; those
    # workers are never forked (a fork server's workers die with it).
    orphan_protection = Defaults.orphan_protection()
    cwd = Map.get(config, :cwd)
    fork? = orphan_protection == true and Config.fork_server?()

    own = Enum.map(slot_env, &elem(&1, 0))

    case if(fork?, do: forked(python, argv, env, cwd, own), else: :spawn) do
      {:ok, _} = forked ->
        forked

      :spawn ->
        case Native.spawn_process(python, argv, env, cwd, self(), %{
               orphan_protection: orphan_protection,
               with_secret: true
             }) do
          {:ok, _} = ok -> ok
          {:error, {_kind, message}} -> {:error, message}
        end
    end
  end

  # A worker forked from a warm fork server, or :spawn to spawn it directly.
  defp forked(python, argv, env, cwd, own) do
    case Snakepit.ForkServer.spawn(python, argv, env, cwd, own) do
      {:ok, _} = ok ->
        ok

      {:error, reason} ->
        Logger.debug("fork server not used (#{inspect(reason)}); spawning the worker directly")
        :spawn
    end
  end

  defp format_reason(reason) when is_binary(reason), do: reason
  defp format_reason(reason), do: inspect(reason)

  defp identity(state) do
    address =
      case Defaults.worker_transport() do
        :tcp -> Config.tcp_listen_address(Defaults.tcp_host())
        :unix -> RuntimeDir.socket_address(state.id)
      end

    [
      address: address,
      lane:
        if(Map.get(state.config, :call_transport) == :lane, do: RuntimeDir.lane_path(state.id)),
      "worker-id": state.id,
      "snakepit-run-id": RunID.current(),
      "instance-name": Config.instance_name_identifier(),
      "elixir-address": Snakepit.GRPC.BridgeServer.address()
    ]
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

  def handle_info({:EXIT, _monitor, :heartbeat_timeout}, state), do: heartbeat_failed(state)

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
    connection_lost(state, :lane_reader_stopped)
    message = "worker #{state.id}: its call lane's reader stopped (#{inspect(reason)})"
    # Calls waiting on the lane hear it now, not at their deadlines.
    Native.lane_close(state.lane, message)
    Snakepit.Logger.error(:worker, message <> "; restarting it")
    {:stop, {:shutdown, {:lane_reader, reason}}, state}
  end

  def handle_info({:lane_closed, reader}, %{lane_reader: reader} = state) do
    connection_lost(state, :lane_closed)

    Snakepit.Logger.error(
      :worker,
      "worker #{state.id}: its call lane closed while its Python process runs; restarting it"
    )

    {:stop, {:shutdown, :lane_closed}, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp handle_process_event({:stdout, "SNAKEPIT_READY " <> ready}, %{status: :starting} = state) do
    {address, lane_path} = parse_ready(ready)

    with {:ok, channel} <- Native.grpc_connect(address),
         {:ok, lane, lane_reader} <- open_lane(lane_path, state) do
      if state.startup_timer, do: Process.cancel_timer(state.startup_timer)

      worker = %{
        id: state.id,
        pid: self(),
        channel: channel,
        lane: lane,
        os_pid: state.os_pid,
        capacity: capacity(state.config)
      }

      Snakepit.Pool.Registry.register_worker(
        state.id,
        registry_metadata(state, worker, address)
      )

      if state.pool_pid, do: send(state.pool_pid, {:worker_ready, state.pool_name, worker})
      if state.starter, do: send(state.starter, {:snakepit_worker_ready, self()})

      duration_ms =
        System.convert_time_unit(
          System.monotonic_time() - state.started_at,
          :native,
          :millisecond
        )

      Telemetry.emit(
        [:snakepit, :pool, :worker, :spawned],
        %{duration: duration_ms, system_time: System.system_time()},
        %{
          node: node(),
          worker_id: state.id,
          pool_name: state.pool_name,
          os_pid: state.os_pid
        }
      )

      Telemetry.emit(
        [:snakepit, :grpc, :connection, :established],
        %{
          duration: System.monotonic_time() - state.started_at,
          system_time: System.system_time()
        },
        %{node: node(), worker_id: state.id, pool_name: state.pool_name, address: address}
      )

      state = start_heartbeat(state, channel)
      # To tell an OOM kill from another SIGKILL when the process dies.
      state = Map.put(state, :oom_kills, Snakepit.Worker.OOMKills.count())

      {:noreply,
       %{
         state
         | status: :ready,
           channel: channel,
           lane: lane,
           lane_reader: lane_reader,
           address: address,
           startup_timer: nil
       }}
    else
      {:error, reason} ->
        fail_startup(
          state,
          "cannot connect to the worker (#{String.trim(ready)}): #{format_reason(reason)}"
        )
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
    fail_startup(%{state | os_pid: nil}, cause, status: status)
  end

  defp handle_process_event({:exit, status}, state) do
    status =
      Snakepit.Worker.OOMKills.classify(status, state.oom_kills, Snakepit.Worker.OOMKills.count())

    ExitStatus.record(state.os_pid, status)
    connection_lost(state, {:python_exited, status})

    Telemetry.emit([:snakepit, :pool, :worker, :terminated], %{}, %{
      worker_id: state.id,
      pool_name: state.pool_name,
      reason: ExitStatus.describe(status)
    })

    # One line, not a crash report: the starter replaces this worker.
    Snakepit.Logger.error(
      :worker,
      "worker #{state.id} (OS pid #{state.os_pid}) #{ExitStatus.describe(status)}; restarting it"
    )

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

  defp capacity(config), do: Snakepit.WorkerProfile.capacity(config)

  # -- pool integration (issue 4): registry metadata and heartbeats ---------------

  # "ADDRESS" or "ADDRESS lane=PATH".
  defp parse_ready(ready) do
    case String.split(ready) do
      [address | extras] ->
        lane =
          Enum.find_value(extras, fn
            "lane=" <> path -> path
            _ -> nil
          end)

        {address, lane}

      [] ->
        {"", nil}
    end
  end

  # A worker that was asked for a lane and offers none (an adapter whose
  # program does not know --lane) is called over gRPC.
  defp open_lane(nil, state) do
    if Map.get(state.config, :call_transport) == :lane,
      do: Logger.debug("[#{state.id}] the worker offers no call lane; calls use gRPC")

    {:ok, nil, nil}
  end

  defp open_lane(path, _state) do
    case Snakepit.Worker.LaneReader.start_link(path) do
      {:ok, reader, lane} -> {:ok, lane, reader}
      {:error, message} -> {:error, "cannot open the call lane: #{message}"}
    end
  end

  defp registry_metadata(state, worker, address) do
    %{
      worker_module: __MODULE__,
      pool_name: state.pool_name,
      pool_identifier: Map.get(state.config, :pool_identifier),
      adapter_module: Map.get(state.config, :adapter_module),
      worker_profile: Map.get(state.config, :worker_profile, :process),
      capacity: worker.capacity,
      os_pid: state.os_pid,
      address: String.trim(address)
    }
  end

  # The monitor pings the Python worker through the native core; after
  # too many misses (dependent mode) it exits this worker with
  # :heartbeat_timeout, handled below.
  defp start_heartbeat(state, channel) do
    config = Map.get(state.config, :heartbeat, %{})

    if Map.get(config, :enabled, false) do
      worker_id = state.id
      timeout = Map.get(config, :timeout_ms, Defaults.heartbeat_timeout_ms())

      ping = fn _ts ->
        ref = make_ref()
        :ok = Native.grpc_heartbeat(channel, self(), ref, worker_id, timeout)
        {:ok, ref}
      end

      {:ok, monitor} =
        Snakepit.HeartbeatMonitor.start_link(
          worker_pid: self(),
          worker_id: worker_id,
          ping_interval_ms:
            Map.get(config, :ping_interval_ms, Defaults.heartbeat_ping_interval_ms()),
          timeout_ms: timeout,
          max_missed_heartbeats:
            Map.get(config, :max_missed_heartbeats, Defaults.heartbeat_max_missed()),
          initial_delay_ms: Map.get(config, :initial_delay_ms, 0),
          dependent: Map.get(config, :dependent, true),
          ping_fun: ping
        )

      Map.put(state, :heartbeat_monitor, monitor)
    else
      state
    end
  end

  # An unresponsive Python process will not honour SIGTERM: kill its group
  # at once and stop abnormally so the starter replaces the worker.
  defp heartbeat_failed(state) do
    connection_lost(state, :heartbeat_timeout)

    if state.os_pid do
      ProcessKiller.kill_process_group(state.os_pid, :sigkill)
      await_exit(state.os_pid, @kill_wait_ms)
    end

    {:stop, {:shutdown, :heartbeat_timeout}, release(%{state | os_pid: nil})}
  end

  # -- end of pool integration ----------------------------------------------------

  # A ready worker's channel goes away with its Python process: the older
  # guide's connection event. (A worker is replaced, never reconnected.)
  defp connection_lost(%{status: :ready} = state, reason) do
    Telemetry.emit(
      [:snakepit, :grpc, :connection, :lost],
      %{system_time: System.system_time()},
      %{node: node(), worker_id: state.id, pool_name: state.pool_name, reason: reason}
    )
  end

  defp connection_lost(_state, _reason), do: :ok

  defp fail_startup(state, cause, opts \\ []) do
    output = :queue.to_list(state.output)

    last =
      if output == [],
        do: "",
        else: "\nLast output of the worker:\n  " <> Enum.join(output, "\n  ")

    error =
      Error.worker_error("worker #{state.id} failed to start: #{cause}#{last}", %{
        worker_id: state.id,
        pool: state.pool_name,
        cause: cause,
        output: output,
        transient: ExitStatus.killed_from_outside?(Keyword.get(opts, :status))
      })

    Telemetry.emit([:snakepit, :pool, :worker, :startup_failed], %{}, %{
      worker_id: state.id,
      pool_name: state.pool_name,
      cause: cause
    })

    cond do
      state.pool_pid -> send(state.pool_pid, {:worker_failed, state.pool_name, state.id, error})
      # A standalone worker's caller waits in start_link/1.
      state.starter -> send(state.starter, {:snakepit_worker_failed, self(), error})
      true -> :ok
    end

    {:stop, {:shutdown, {:startup_failed, Keyword.get(opts, :status, :error)}},
     stop_process(state)}
  end

  @impl true
  def handle_cast(:hard_stop, state) do
    connection_lost(state, :hard_stop)

    Snakepit.Logger.error(
      :worker,
      "worker #{state.id} (OS pid #{state.os_pid}) is killed: a cancelled call did not stop in time"
    )

    if state.os_pid do
      ProcessKiller.kill_process_group(state.os_pid, :sigkill)
      await_exit(state.os_pid, @kill_wait_ms)
    end

    {:stop, {:shutdown, :hard_stop}, release(%{state | os_pid: nil})}
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
    pid = state.os_pid
    ProcessKiller.kill_process_group(pid, :sigterm)

    unless await_exit(pid, Defaults.graceful_shutdown_timeout_ms()) do
      ProcessKiller.kill_process_group(pid, :sigkill)
      await_exit(pid, @kill_wait_ms)
    end

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
