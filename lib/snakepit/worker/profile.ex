defmodule Snakepit.WorkerProfile do
  @moduledoc """
  How a pool's workers are made and used: one single-threaded Python
  process per worker (`Snakepit.WorkerProfile.Process`, the default) or a
  few multi-threaded ones (`Snakepit.WorkerProfile.Thread`).

  The pool starts every worker through its profile's `start_worker/1` and
  schedules as many concurrent requests on a worker as `get_capacity/1`
  says. A worker handle is the pid of the worker's `Snakepit.GRPCWorker`.

      defmodule MyProfile do
        @behaviour Snakepit.WorkerProfile

        def start_worker(config), do: ...   # {:ok, worker_pid}
        def get_capacity(_worker), do: 1
        ...
      end

  The helpers in this module implement the parts both built-in profiles
  share.
  """

  alias Snakepit.GRPC.Client
  alias Snakepit.GRPCWorker
  alias Snakepit.Pool.{Registry, WorkerSupervisor}
  alias Snakepit.Pool.Worker.Starter

  @type worker_handle :: pid() | reference()
  @type capacity :: pos_integer()
  @type config :: map()

  @doc """
  Starts a worker. `config` holds `:id`, `:pool_name`, `:pool_pid`,
  `:config` (the normalized pool config).
  """
  @callback start_worker(config()) :: {:ok, worker_handle()} | {:error, term()}

  @doc "Stops a worker gracefully (its Python process included)."
  @callback stop_worker(worker_handle()) :: :ok

  @doc """
  Runs `request` (`%{command: String.t(), args: map()}` plus optional
  `:session_id`) on the worker and waits up to `timeout` ms.
  """
  @callback execute_request(worker_handle(), request :: map(), timeout()) ::
              {:ok, term()} | {:error, term()}

  @doc "How many requests the worker may run at once."
  @callback get_capacity(worker_handle()) :: capacity()

  @doc "How many requests the worker runs now."
  @callback get_load(worker_handle()) :: non_neg_integer()

  @doc "`:ok` when the worker answers a ping."
  @callback health_check(worker_handle()) :: :ok | {:error, term()}

  @doc "Profile-specific facts about the worker."
  @callback get_metadata(worker_handle()) :: {:ok, map()} | {:error, term()}

  @optional_callbacks get_metadata: 1

  @doc """
  Capacity a worker of this pool config gets: what the profile put in
  `:worker_capacity`, else 1 (or `threads_per_worker` for the thread profile).
  """
  @spec capacity(map()) :: pos_integer()
  def capacity(%{worker_capacity: n}) when is_integer(n) and n > 0, do: n
  def capacity(%{worker_profile: :thread, threads_per_worker: n}), do: n
  def capacity(_config), do: 1

  @doc false
  # Starts the worker with its pool config changed by `adjust` and returns
  # the GRPCWorker pid.
  def start_with(%{config: config} = args, adjust) do
    config = config |> adjust.() |> Map.put(:pool_pid, args.pool_pid)
    config = Map.put(config, :worker_supervisor, Map.get(args.config, :worker_supervisor))

    with {:ok, starter} <-
           WorkerSupervisor.start_worker(
             args.id,
             Snakepit.GRPCWorker,
             nil,
             args.pool_name,
             config
           ) do
      case Starter.worker_pid(starter) do
        pid when is_pid(pid) -> {:ok, pid}
        nil -> {:error, :worker_not_started}
      end
    end
  end

  @doc false
  # The environment every worker gets from its pool config: the heartbeat
  # settings the Python side mirrors, the message-size, nesting, integer and
  # memory limits, then `extra`, then the user's adapter_env (which wins).
  def worker_env(config, extra) do
    settings =
      [
        {"SNAKEPIT_HEARTBEAT_CONFIG", JSON.encode!(Map.get(config, :heartbeat, %{}))},
        {"SNAKEPIT_MAX_MESSAGE_BYTES", Integer.to_string(Snakepit.Defaults.max_message_bytes())},
        {"SNAKEPIT_LOG_LEVEL", Snakepit.Worker.PythonLog.worker_level()},
        {"SNAKEPIT_MAX_NESTING_DEPTH", Integer.to_string(Snakepit.Defaults.max_nesting_depth())},
        {"SNAKEPIT_MAX_INTEGER_DIGITS", Integer.to_string(Snakepit.Defaults.max_integer_digits())}
      ] ++ telemetry() ++ instance_token() ++ memory_limit(config) ++ extra

    user = config.adapter_env
    Enum.reject(settings, fn {k, _} -> List.keymember?(user, k, 0) end) ++ user
  end

  # Whether to send events from the start (see Snakepit.Telemetry.GrpcStream),
  # and how often to sample memory.
  defp telemetry do
    [
      {"SNAKEPIT_TELEMETRY_FORWARD",
       if(Snakepit.Telemetry.GrpcStream.listening?(), do: "1", else: "0")},
      {"SNAKEPIT_TELEMETRY_MEMORY_MS",
       Integer.to_string(Snakepit.Defaults.telemetry_memory_interval_ms())}
    ]
  end

  # In the environment, never on the (world-readable) command line.
  defp instance_token do
    case Snakepit.Config.instance_token_identifier() do
      nil -> []
      token -> [{"SNAKEPIT_INSTANCE_TOKEN", token}]
    end
  end

  defp memory_limit(%{worker_memory_limit_mb: mb}) when is_integer(mb),
    do: [{"SNAKEPIT_MEMORY_LIMIT_MB", Integer.to_string(mb)}]

  defp memory_limit(_config), do: []

  @doc false
  def stop(worker) when is_pid(worker) do
    case Registry.get_worker_id_by_pid(worker) do
      {:ok, id} -> WorkerSupervisor.stop_worker_by_id(id)
      :error -> stop_starter(worker)
    end
  end

  defp stop_starter(worker) do
    with {:dictionary, dict} <- Process.info(worker, :dictionary),
         [starter | _] when is_pid(starter) <- Keyword.get(dict, :"$ancestors", []) do
      WorkerSupervisor.stop_worker(starter)
      :ok
    else
      _ -> :ok
    end
  end

  @doc false
  # The built-in profiles' execute_request/3: the request on that one
  # worker, as `Snakepit.GRPCWorker.execute/5` runs it (outside the pool).
  def execute_request(worker, request, timeout) when is_map(request) do
    opts = if session = request[:session_id], do: [session_id: session], else: []
    GRPCWorker.execute(worker, request[:command], Map.get(request, :args, %{}), timeout, opts)
  end

  def execute_request(_worker, request, _timeout) do
    {:error,
     Snakepit.Error.validation_error(
       "a request is a map with :command and :args, got: #{inspect(request, limit: 5)}"
     )}
  end

  @doc false
  def health_check(worker) do
    info = GRPCWorker.get_info(worker)

    case Client.ping(%{id: info.id, channel: info.channel}, 5_000) do
      {:ok, _} -> :ok
      {:error, error} -> {:error, error}
    end
  catch
    :exit, reason -> {:error, {:worker_down, reason}}
  end

  @doc false
  def load(worker) do
    with {:ok, id} <- Registry.get_worker_id_by_pid(worker),
         {:ok, meta} <- Registry.get_worker_metadata(id) do
      Snakepit.Pool.worker_load(meta.pool_name, id)
    else
      _ -> 0
    end
  end

  @doc false
  def metadata(worker) do
    with {:ok, id} <- Registry.get_worker_id_by_pid(worker),
         {:ok, meta} <- Registry.get_worker_metadata(id) do
      {:ok, meta}
    else
      _ -> {:error, :not_found}
    end
  end
end
