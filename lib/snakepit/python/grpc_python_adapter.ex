defmodule Snakepit.Adapters.GRPCPython do
  @moduledoc """
  Adapter for Python workers: runs `python -m snakepit_bridge.server` with
  the pool's `adapter_args` (`["--adapter", "my_module.MyAdapter"]`). When
  no `--adapter` is given the worker loads the bundled `ShowcaseAdapter`.
  """
  @behaviour Snakepit.Adapter

  alias Snakepit.{Defaults, PythonRuntime}
  alias Snakepit.GRPC.Client

  @impl true
  def executable_path do
    case PythonRuntime.executable() do
      {:ok, path} -> path
      {:error, _} -> "python3"
    end
  end

  @impl true
  def resolve_executable, do: PythonRuntime.executable()

  @impl true
  def script_path, do: "snakepit_bridge.server"

  @impl true
  def script_args, do: []

  @doc """
  Default timeout (ms) of a command sent with `grpc_execute/6`:
  `Snakepit.Defaults.grpc_batch_inference_timeout/0` for
  `"batch_inference"`, `Snakepit.Defaults.grpc_large_dataset_timeout/0`
  for `"process_large_dataset"`, else
  `Snakepit.Defaults.grpc_command_timeout/0`.
  """
  @impl true
  def command_timeout("batch_inference", _args), do: Defaults.grpc_batch_inference_timeout()

  def command_timeout("process_large_dataset", _args),
    do: Defaults.grpc_large_dataset_timeout()

  def command_timeout(_command, _args), do: Defaults.grpc_command_timeout()

  # -- upstream's gRPC helpers ---------------------------------------------------

  @doc """
  Whether the gRPC machinery is here: the native core, which holds the
  gRPC client to workers and the bridge server, is loaded. (Workers also
  need `grpcio` in their Python environment: `mix snakepit.doctor`.)
  """
  @spec grpc_available?() :: boolean()
  def grpc_available?, do: Code.ensure_loaded?(Snakepit.Native)

  @doc """
  Whether this adapter talks gRPC to its workers: true when
  `grpc_available?/0`. (Calls may take the worker's call lane, a leaner
  socket beside gRPC; see `call_transport`.)
  """
  @spec uses_grpc?() :: boolean()
  def uses_grpc?, do: grpc_available?()

  @doc """
  The port a worker is asked to listen on: `0`. Workers listen on Unix
  sockets in the private runtime directory, or, under `worker_transport:
  :tcp`, on a port the OS assigns; each reports its address when ready.
  """
  @spec get_port() :: 0
  def get_port, do: 0

  @doc """
  A connection to the worker listening at `port` (or at an address,
  `"unix:/path"` or `"host:port"`), retried briefly while its server comes
  up: `{:ok, connection}` for `grpc_execute/6`, or `{:error, error}`. See
  `Snakepit.GRPC.Client.connect/1`; a pool's workers are reached with
  `Snakepit.GRPCWorker.get_channel/1`.
  """
  @spec init_grpc_connection(non_neg_integer() | String.t()) ::
          {:ok, Snakepit.GRPCWorker.connection()} | {:error, Snakepit.Error.t()}
  def init_grpc_connection(port), do: Client.connect(port)

  @doc """
  Runs `command` with `args` over `connection` (from
  `Snakepit.GRPCWorker.get_channel/1` or `init_grpc_connection/1`), in the
  session `session_id` (nil for none): `{:ok, result}` or `{:error,
  error}`, as `Snakepit.execute/3`. `timeout` (ms) defaults to
  `command_timeout/2`. Options: `:metadata`, `:correlation_id`,
  `:binary_parameters`.
  """
  @spec grpc_execute(map(), String.t() | nil, String.t(), map(), timeout() | nil, keyword()) ::
          {:ok, term()} | {:error, Snakepit.Error.t() | Exception.t()}
  def grpc_execute(connection, session_id, command, args, timeout \\ nil, opts \\ []) do
    timeout = timeout || command_timeout(command, args)

    with :ok <- check_session(session_id),
         :ok <- Client.check_call(connection, command, args, timeout, opts) do
      Client.execute(connection, command, args, call_opts(timeout, session_id, opts))
    end
  end

  @doc """
  Runs streaming `command` over `connection`, calling `callback_fn` with
  each chunk (the chunk shape of `Snakepit.execute_stream/4`): `:ok` when
  the stream ends, or `{:error, error}`. `timeout` defaults to
  `Snakepit.Defaults.grpc_worker_stream_timeout/0`; the rest as
  `grpc_execute/6`.
  """
  @spec grpc_execute_stream(
          map(),
          String.t() | nil,
          String.t(),
          map(),
          (map() -> term()),
          timeout() | nil,
          keyword()
        ) :: :ok | {:error, Snakepit.Error.t() | Exception.t()}
  def grpc_execute_stream(
        connection,
        session_id,
        command,
        args,
        callback_fn,
        timeout \\ nil,
        opts \\ []
      ) do
    timeout = timeout || Defaults.grpc_worker_stream_timeout()

    with :ok <- check_session(session_id),
         :ok <- check_callback(callback_fn),
         :ok <- Client.check_call(connection, command, args, timeout, opts) do
      Client.execute_stream(
        connection,
        command,
        args,
        callback_fn,
        call_opts(timeout, session_id, opts)
      )
    end
  end

  defp call_opts(timeout, nil, opts), do: Client.direct_opts(timeout, opts)

  defp call_opts(timeout, session_id, opts),
    do: Client.direct_opts(timeout, Keyword.put(opts, :session_id, session_id))

  defp check_session(nil), do: :ok
  defp check_session(id) when is_binary(id) and id != "", do: :ok

  defp check_session(other),
    do:
      {:error,
       Snakepit.Error.validation_error(
         "session_id must be nil or a non-empty string, got: #{inspect(other)}"
       )}

  defp check_callback(fun) when is_function(fun, 1), do: :ok

  defp check_callback(other),
    do:
      {:error,
       Snakepit.Error.validation_error(
         "callback must be a function of arity 1, got: #{inspect(other)}"
       )}

  @doc """
  The argv (after the interpreter) of one worker: the server module, the
  user's adapter arguments, and the worker's identity flags.
  """
  @spec worker_args([String.t()], keyword()) :: [String.t()]
  def worker_args(adapter_args, identity) do
    adapter_args =
      if "--adapter" in adapter_args,
        do: adapter_args,
        else: ["--adapter", Defaults.default_python_adapter() | adapter_args]

    ["-m", script_path()] ++ adapter_args ++ Snakepit.Adapter.flags(identity)
  end

  @doc "`--flag value` pairs for the identity keywords that are set."
  @spec flags(keyword()) :: [String.t()]
  defdelegate flags(identity), to: Snakepit.Adapter
end
