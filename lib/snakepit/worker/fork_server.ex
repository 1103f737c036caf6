defmodule Snakepit.Worker.ForkServer do
  @moduledoc """
  Starts Python workers by forking them from a warm Python process.

  A fresh interpreter spends most of its start importing grpc, protobuf and
  the bridge (about 150-200 ms of CPU); a pool of 100 pays that 100 times.
  A fork server (`python -m snakepit_bridge.fork_server`) pays it once and
  then forks workers that only import their adapter and start serving.

  There is one fork server per interpreter (by
  `Snakepit.PythonRuntime.runtime_identity/0`'s rules: path, version,
  platform), environment and working directory, started on first use and kept for the life of the
  application. Forked workers are handled like spawned ones: each leads
  its own session with a parent-death signal, gets its own group guard in
  this VM, carries the run id on its command line (inherited from the fork
  server) and reports output and exit to its owner with the same messages
  as `Snakepit.Native.spawn_process/6`. If the fork server dies, its
  workers die with it (parent-death signal) and are replaced like any
  crashed worker; the next start launches a new fork server.

  Turn it off with `config :snakepit, fork_server: false`; workers are then
  spawned directly. Callers fall back to a direct spawn by themselves when
  a fork server cannot be had.
  """
  use GenServer

  require Logger

  alias Snakepit.{Config, Native, RunID}

  alias Snakepit.OS.RuntimeDir
  alias Snakepit.Pool.ProcessRegistry

  # A fork server imports grpc and the bridge once; on a loaded machine
  # that can take a few seconds.
  @start_timeout_ms 30_000
  @kept_lines 20

  @doc false
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc """
  Forks a worker running `argv` (`[python, "-m", "snakepit_bridge.server" | args]`)
  with exactly `env` in `cwd`, owned by the calling process. Returns what
  `Snakepit.Native.spawn_process/6` returns, or `{:error, reason}` when no
  fork server can be had or `argv` does not start the bridge's server.

  `own` names the variables of `env` that are this worker's alone (its
  slot's, `Snakepit.Worker.SlotEnv`): workers that differ only in those
  share a fork server, which runs without them (a forked worker takes on
  its request's whole environment). Variables named `PYTHON*` are never
  treated as a worker's own: the interpreter reads them once at start,
  so a worker that needs other values needs a fork server started with
  them.
  """
  @spec spawn(
          String.t(),
          [String.t()],
          [{String.t(), String.t()}],
          String.t() | nil,
          [String.t()]
        ) ::
          {:ok, {pos_integer(), reference()}} | {:error, term()}
  def spawn(python, argv, env, cwd, own \\ [])

  def spawn(python, [python, "-m", "snakepit_bridge.server" | _] = argv, env, cwd, own) do
    own = Enum.reject(own, &String.starts_with?(&1, "PYTHON"))
    shared = Enum.reject(env, fn {k, _} -> k in own end)

    # Keyed by the interpreter's identity too: an environment recreated at the
    # same path (another Python version) gets a fresh fork server.
    with {:ok, server} <- server_for({python, interpreter(python), shared, cwd}) do
      Native.fork_server_spawn(server, argv, env, cwd, self())
    end
  end

  def spawn(_python, _argv, _env, _cwd, _own), do: {:error, :not_the_bridge_server}

  @doc "OS pids of the running fork servers."
  @spec os_pids() :: [pos_integer()]
  def os_pids do
    if Process.whereis(__MODULE__), do: GenServer.call(__MODULE__, :os_pids), else: []
  end

  defp server_for(key) do
    if Process.whereis(__MODULE__) do
      GenServer.call(__MODULE__, {:server, key}, @start_timeout_ms + 5_000)
    else
      {:error, :fork_server_not_running}
    end
  catch
    :exit, reason -> {:error, {:fork_server_unavailable, reason}}
  end

  # -- server -------------------------------------------------------------------

  # Servers are keyed by their environment, which may hold secrets.
  @impl true
  def format_status(status) do
    status
    |> Map.update(:state, nil, fn state -> %{fork_servers: length(Map.keys(state.servers))} end)
    |> Snakepit.Redact.status()
  end

  @impl true
  def init(_opts) do
    Process.flag(:trap_exit, true)
    {:ok, %{servers: %{}}}
  end

  @impl true
  def handle_call({:server, key}, from, state) do
    case Map.fetch(state.servers, key) do
      {:ok, %{status: :ready, conn: conn}} ->
        {:reply, {:ok, conn}, state}

      {:ok, %{status: :starting} = server} ->
        {:noreply, put_server(state, key, %{server | waiters: [from | server.waiters]})}

      :error ->
        case start_server(key) do
          {:ok, server} ->
            {:noreply, put_server(state, key, %{server | waiters: [from]})}

          {:error, _} = error ->
            {:reply, error, state}
        end
    end
  end

  def handle_call(:os_pids, _from, state),
    do: {:reply, Enum.map(Map.values(state.servers), & &1.os_pid), state}

  @impl true
  def handle_info({:snakepit_process, os_pid, event}, state) do
    case key_of(state, os_pid) do
      nil -> {:noreply, state}
      key -> {:noreply, handle_event(event, key, state.servers[key], state)}
    end
  end

  def handle_info({:start_timeout, os_pid}, state) do
    with key when key != nil <- key_of(state, os_pid),
         %{status: :starting} = server <- state.servers[key] do
      # Its exit notice then answers the waiters.
      Native.release_process(server.handle)

      {:noreply,
       put_server(state, key, %{server | failure: "did not start within #{@start_timeout_ms} ms"})}
    else
      _ -> {:noreply, state}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    # Workers were stopped before us; their fork servers go now, not when
    # the guard gets to it, so the shutdown sweep finds nothing left.
    for {_key, server} <- state.servers do
      Snakepit.ProcessKiller.kill_process_group(server.os_pid, :sigkill)
      Native.release_process(server.handle)
      ProcessRegistry.unregister_worker(server.id)
    end

    :ok
  end

  defp handle_event(
         {:stdout, "SNAKEPIT_FORK_SERVER_READY"},
         key,
         %{status: :starting} = server,
         state
       ) do
    case Native.fork_server_connect(server.path) do
      {:ok, conn} ->
        Enum.each(server.waiters, &GenServer.reply(&1, {:ok, conn}))
        put_server(state, key, %{server | status: :ready, conn: conn, waiters: []})

      {:error, reason} ->
        Native.release_process(server.handle)
        failure = Snakepit.Error.Native.to_error(reason, "cannot connect").message
        put_server(state, key, %{server | failure: failure})
    end
  end

  defp handle_event({stream, line}, key, server, state) when stream in [:stdout, :stderr] do
    Logger.debug("[fork server #{server.os_pid}] #{line}")
    lines = Enum.take([line | server.output], @kept_lines)
    put_server(state, key, %{server | output: lines})
  end

  defp handle_event({:exit, status}, key, server, state) do
    ProcessRegistry.unregister_worker(server.id)
    Native.release_process(server.handle)

    if server.waiters != [] do
      reason = failure(server, status)
      Enum.each(server.waiters, &GenServer.reply(&1, {:error, reason}))
    end

    if server.status == :ready do
      Logger.warning(
        "Snakepit fork server #{server.os_pid} exited (#{inspect(status)}); " <>
          "its workers exit with it and are replaced"
      )
    end

    %{state | servers: Map.delete(state.servers, key)}
  end

  # A handful of fork servers at most: a scan is cheaper than an index to keep.
  defp key_of(state, os_pid),
    do: Enum.find_value(state.servers, fn {key, server} -> server.os_pid == os_pid && key end)

  defp failure(server, status) do
    cause = server.failure || "exited during startup (#{inspect(status)})"
    output = server.output |> Enum.reverse() |> Enum.join("\n")
    "fork server #{cause}" <> if(output == "", do: "", else: ":\n" <> output)
  end

  defp put_server(state, key, server), do: %{state | servers: Map.put(state.servers, key, server)}

  defp interpreter(python) do
    case Snakepit.PythonRuntime.identity(python) do
      {:ok, identity} -> identity
      {:error, _} -> python
    end
  end

  defp start_server({python, _identity, env, cwd}) do
    n = System.unique_integer([:positive])
    id = "fork_server_#{n}"
    path = Path.join(RuntimeDir.path(), "fork-#{n}.sock")

    identity =
      Snakepit.Adapters.GRPCPython.flags(
        "snakepit-run-id": RunID.current(),
        "instance-name": Config.instance_name_identifier()
      )

    argv = [python, "-m", "snakepit_bridge.fork_server", "--control", path | identity]

    with :ok <- ProcessRegistry.reserve_worker(id),
         {:ok, {os_pid, handle}} <-
           Native.spawn_process(python, argv, env, cwd, self(), %{
             orphan_protection: true,
             with_secret: true
           }) do
      :ok = ProcessRegistry.activate_worker(id, self(), os_pid, RunID.current())
      Process.send_after(self(), {:start_timeout, os_pid}, @start_timeout_ms)

      {:ok,
       %{
         id: id,
         os_pid: os_pid,
         handle: handle,
         path: path,
         status: :starting,
         conn: nil,
         waiters: [],
         output: [],
         failure: nil
       }}
    else
      {:error, reason} ->
        ProcessRegistry.unregister_worker(id)
        {:error, reason}
    end
  end
end
