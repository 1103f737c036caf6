defmodule Snakepit.GRPC.BridgeServer do
  @moduledoc """
  The Elixir side of the `ElixirBridge` gRPC service that Python workers
  call back into.

  The server itself runs in the native core (tonic), listening on
  `bridge.sock` in the instance's private runtime directory (or on loopback
  TCP when `config :snakepit, worker_transport: :tcp`). Every worker is
  started with `--elixir-address` set to `address/0`. This process owns the
  server and is its dispatcher: each call arrives as a message
  `{:snakepit_bridge, call, rpc, request}` and is answered in a process of
  its own under `Snakepit.Bridge.TaskSupervisor`, so a slow or failing call
  never holds up or crashes the others or this process.

  | rpc | answered by |
  |---|---|
  | `RegisterTools` | `Snakepit.Bridge.ToolRegistry.register_tools/2` |
  | `GetExposedElixirTools` | `Snakepit.Bridge.ToolRegistry.list_exposed_elixir_tools/1` |
  | `ExecuteElixirTool` | the tool's handler, in its own process, with a timeout |
  | `InitializeSession`, `GetSession`, `CleanupSession` | `Snakepit.GRPC.BridgeServer.Sessions`, on `Snakepit.Bridge.SessionStore` (and the registry's `cleanup_session/1`) |
  | `Heartbeat` | `:ok` |
  | `StreamTelemetry` | `Snakepit.Telemetry.GrpcStream` (one stream per worker, events folded into Elixir telemetry) |

  ## Elixir tools called from Python

  The tool is looked up in the caller's session, then in the global scope.
  It must be a local tool registered with `exposed_to_python: true`. It runs
  with the call's budget (`timeout_ms` from Python, which sends the rest of
  its own budget; `bridge_tool_timeout_ms` when none) minus a small margin,
  so that Python gets a structured timeout before its own deadline. Every
  failure reaches Python as a `ToolError` (raised there as
  `ElixirToolError`):

  | situation | type | kind |
  |---|---|---|
  | no such tool | `ToolNotFoundError` | `unknown_tool` |
  | not exposed, or a Python tool | `ToolNotExposedError` | `not_exposed` |
  | handler returned `{:error, reason}` | `ElixirError` (or the exception's name) | `tool` |
  | handler raised | the exception's name, e.g. `ArgumentError` | `tool` |
  | handler threw / exited | `throw` / `exit` | `tool` |
  | out of time | `TimeoutError` | `timeout` |
  | arguments not a JSON object, result not encodable | `SerializationError` | `serialization` |
  """
  use GenServer

  require Logger

  alias Snakepit.Bridge.{InternalToolSpec, ToolRegistry}
  alias Snakepit.{Defaults, Native}
  alias Snakepit.OS.RuntimeDir
  alias Snakepit.GRPC.BridgeServer.Sessions

  @address_key {__MODULE__, :address}
  @tcp_key {__MODULE__, :last_tcp_address}
  @tasks Snakepit.Bridge.TaskSupervisor

  # -- API -------------------------------------------------------------------

  @doc false
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "The address workers reach the bridge at (`unix:/path` or `host:port`); nil when it is not running."
  @spec address() :: String.t() | nil
  def address, do: :persistent_term.get(@address_key, nil)

  # -- server ------------------------------------------------------------------

  @impl true
  def init(_opts) do
    Process.flag(:trap_exit, true)

    case start_server(listen_addresses()) do
      {:ok, {handle, bound}} ->
        :persistent_term.put(@address_key, bound)
        unless String.starts_with?(bound, "unix:"), do: :persistent_term.put(@tcp_key, bound)
        {:ok, %{handle: handle, address: bound}}

      {:error, message} ->
        {:stop, {:bridge_start_failed, message}}
    end
  end

  defp start_server([address | fallbacks]) do
    case Native.bridge_start(
           address,
           self(),
           Defaults.bridge_call_timeout_ms(),
           Defaults.allow_non_loopback_bind()
         ) do
      {:ok, _} = ok ->
        ok

      # A remembered address someone took since: the next one.
      {:error, reason} when fallbacks == [] ->
        {:error, Snakepit.Error.Native.to_error(reason).message}

      {:error, _} ->
        start_server(fallbacks)
    end
  end

  # Where grpc_listener says (beside the workers by default). A restarted
  # bridge listens where its predecessor did, so running workers reconnect.
  defp listen_addresses do
    Snakepit.Config.Listener.addresses(
      Snakepit.Config.Listener.config!(),
      Path.join(RuntimeDir.path(), "bridge.sock"),
      :persistent_term.get(@tcp_key, nil)
    )
  end

  @impl true
  def handle_info({:snakepit_bridge, call, rpc, request}, state) do
    case Task.Supervisor.start_child(@tasks, fn -> answer(call, rpc, request) end) do
      {:ok, _pid} ->
        :ok

      {:error, reason} ->
        Native.bridge_reply(call, failure(rpc, "cannot run the call: #{inspect(reason)}"))
    end

    {:noreply, state}
  end

  # A worker opened its telemetry stream: its events go to GrpcStream.
  def handle_info({:snakepit_telemetry_open, stream, worker_id}, state) do
    Snakepit.Telemetry.GrpcStream.register_worker(stream, %{worker_id: worker_id})
    {:noreply, state}
  end

  # A call without this VM's secret was refused before any code ran.
  def handle_info({:snakepit_auth_refused, reason}, state) do
    Snakepit.Telemetry.emit([:snakepit, :security, :unauthenticated], %{count: 1}, %{
      server: :bridge,
      reason: reason
    })

    {:noreply, state}
  end

  def handle_info(other, state) do
    malformed(other)
    {:noreply, state}
  end

  @impl true
  def handle_call(request, _from, state) do
    malformed(request)
    {:reply, {:error, :unknown_request}, state}
  end

  @impl true
  def handle_cast(message, state) do
    malformed(message)
    {:noreply, state}
  end

  defp malformed(message),
    do: Snakepit.Logger.malformed(:bridge, "Snakepit.GRPC.BridgeServer", message)

  @impl true
  def terminate(_reason, state) do
    Native.bridge_stop(state.handle)
    :persistent_term.erase(@address_key)
    :ok
  end

  # -- one call ----------------------------------------------------------------

  @doc false
  # Answers one call; runs in its own process. Whatever happens, the call
  # gets exactly one reply.
  @spec answer(reference(), atom(), map()) :: :ok
  def answer(call, rpc, request) do
    reply =
      try do
        handle(rpc, request)
      rescue
        e -> failure(rpc, "the bridge failed: " <> Exception.message(e))
      catch
        kind, reason -> failure(rpc, "the bridge failed: #{kind} #{inspect(reason)}")
      end

    with {:error, reason} <- Native.bridge_reply(call, reply) do
      case Snakepit.Error.Native.to_error(reason, "bridge reply to #{rpc} was refused") do
        # A reply that cannot be sent is worth a line; one to a call that
        # was answered already or timed out is not.
        %{category: :validation, message: message} -> Logger.warning(message)
        _late -> :ok
      end
    end
  end

  defp failure(:execute_elixir_tool, message),
    do: tool_error("ElixirBridgeError", message, "bridge")

  defp failure(_rpc, message), do: {:error, message}

  @doc false
  # The reply for `rpc`; see `Snakepit.Native.bridge_reply/2`.
  @spec handle(atom(), map()) :: term()
  def handle(:register_tools, %{session_id: session, worker_id: worker, tools: tools}) do
    specs = Enum.map(tools, &Map.put(&1, :worker_id, worker))

    case ToolRegistry.register_tools(session, specs) do
      {:ok, names} -> {:ok, Map.new(names, &{&1, tool_id(session, &1)})}
      {:error, error} -> {:error, Exception.message(error)}
    end
  end

  def handle(:get_exposed_elixir_tools, %{session_id: session}) do
    {:ok, session |> ToolRegistry.list_exposed_elixir_tools() |> Enum.map(&wire_spec/1)}
  end

  def handle(:execute_elixir_tool, request), do: execute(request)

  def handle(:initialize_session, %{session_id: session, config: config}) do
    case Sessions.initialize(session, config) do
      {:ok, _} -> {:ok, session |> ToolRegistry.list_tools() |> Enum.map(&wire_spec/1)}
      {:error, message} -> {:error, message}
    end
  end

  def handle(:get_session, %{session_id: session}) do
    case Sessions.get(session) do
      {:ok, info} ->
        {:ok,
         %{
           metadata: info.metadata,
           created_at_ms: info.created_at_ms,
           last_accessed_ms: info.last_accessed_ms,
           tool_count: length(ToolRegistry.list_tools(session))
         }}

      :not_found ->
        :not_found
    end
  end

  def handle(:cleanup_session, %{session_id: session}) do
    # The global scope ("") is not a session: its tools stay.
    own_tools = if session == "", do: 0, else: length(ToolRegistry.session_tools(session))
    existed = Sessions.delete(session)
    if session != "", do: ToolRegistry.cleanup_session(session)
    {:ok, own_tools + if(existed, do: 1, else: 0)}
  end

  def handle(:heartbeat, _request), do: :ok

  defp tool_id(session, name), do: "#{session}/#{name}"

  # -- ExecuteElixirTool -------------------------------------------------------

  defp execute(%{session_id: session, tool_name: name} = request) do
    case ToolRegistry.get_tool(session, name) do
      {:ok, %InternalToolSpec{type: :local, exposed_to_python: true} = spec} ->
        params = Map.merge(request.args, request.binary_parameters)
        budget = budget_ms(request.timeout_ms)
        run(spec, params, budget)

      {:ok, _} ->
        tool_error(
          "ToolNotExposedError",
          "Elixir tool '#{name}' is not exposed to Python; register it with exposed_to_python: true",
          "not_exposed"
        )

      {:error, :not_found} ->
        exposed = session |> ToolRegistry.list_exposed_elixir_tools() |> Enum.map(& &1.name)
        listing = if exposed == [], do: "(none)", else: Enum.join(exposed, ", ")

        tool_error(
          "ToolNotFoundError",
          "unknown Elixir tool '#{name}'; tools exposed to Python: #{listing}",
          "unknown_tool"
        )
    end
  end

  @doc false
  # The tool's own budget: what Python gave, less a margin so that the
  # structured timeout reaches Python before its gRPC deadline does.
  @spec budget_ms(integer()) :: pos_integer()
  def budget_ms(timeout_ms) when is_integer(timeout_ms) and timeout_ms > 0,
    do: max(max(timeout_ms - 100, div(timeout_ms, 2)), 1)

  def budget_ms(_), do: Defaults.bridge_tool_timeout_ms()

  defp run(spec, params, budget) do
    task = Task.Supervisor.async_nolink(@tasks, ToolRegistry, :invoke, [spec, params])

    case Task.yield(task, budget) || Task.shutdown(task, :brutal_kill) do
      {:ok, result} ->
        tool_reply(spec.name, result)

      {:exit, reason} ->
        tool_reply(spec.name, {:raised, :exit, reason, []})

      nil ->
        tool_error(
          "TimeoutError",
          "Elixir tool '#{spec.name}' did not finish within #{budget} ms",
          "timeout"
        )
    end
  end

  @doc false
  # The bridge reply for a handler's outcome.
  @spec tool_reply(String.t(), term()) :: term()
  def tool_reply(_name, {:ok, value}) when is_binary(value) do
    if String.valid?(value), do: {:ok, value}, else: {:binary, value}
  end

  def tool_reply(_name, {:ok, value}), do: {:ok, value}

  def tool_reply(_name, {:error, %{__exception__: true} = e}),
    do: tool_error(exception_name(e), Exception.message(e), "tool")

  def tool_reply(_name, {:error, reason}) when is_binary(reason),
    do: tool_error("ElixirError", reason, "tool")

  def tool_reply(_name, {:error, reason}), do: tool_error("ElixirError", inspect(reason), "tool")

  def tool_reply(_name, {:raised, :error, e, stack}),
    do:
      tool_error(
        exception_name(e),
        Exception.message(e),
        "tool",
        Exception.format_stacktrace(stack)
      )

  def tool_reply(_name, {:raised, kind, reason, stack}),
    do: tool_error(to_string(kind), inspect(reason), "tool", Exception.format_stacktrace(stack))

  defp exception_name(%module{}), do: module |> inspect() |> String.replace_prefix("Elixir.", "")

  defp tool_error(type, message, kind, traceback \\ "") do
    {:error, %{type: type, message: message, traceback: traceback, kind: kind}}
  end

  # -- specs on the wire ---------------------------------------------------------

  @doc false
  # A registry entry as the bridge sends it: the ToolSpec message's fields.
  @spec wire_spec(InternalToolSpec.t()) :: map()
  def wire_spec(%InternalToolSpec{} = spec) do
    %{
      name: spec.name,
      description: spec.description,
      parameters: Enum.map(spec.parameters, &wire_param/1),
      supports_streaming: spec.supports_streaming,
      metadata: wire_metadata(spec)
    }
  end

  defp wire_param(param) do
    base = Map.take(param, [:name, :type, :required, :description])

    case Map.fetch(param, :default) do
      {:ok, default} -> Map.put(base, :default, default)
      :error -> base
    end
  end

  defp wire_metadata(spec) do
    extra =
      for {k, v} <- spec.metadata, into: %{} do
        {to_string(k), if(is_binary(v), do: v, else: inspect(v))}
      end

    Map.merge(extra, %{"type" => Atom.to_string(spec.type)})
    |> then(fn m -> if spec.worker_id, do: Map.put(m, "worker_id", spec.worker_id), else: m end)
  end
end
