defmodule Snakepit.Native do
  @moduledoc """
  The one boundary to the Rust native core (`native/snakepit_native`).

  Every NIF has a stub here and nothing else in Snakepit loads or calls the
  library directly. Functions that do I/O return at once and reply later
  with `{ref, result}` to the pid given; `spawn_process/5` runs on a dirty
  I/O scheduler.
  """

  @typedoc """
  How every NIF and asynchronous reply fails: a kind an Elixir caller can
  match on (`:invalid_argument`, an errno name, a gRPC status name, ...)
  and a message (see `Snakepit.Error.Native`).
  """
  @type error :: {:error, {atom(), String.t()}}

  @on_load :load_nif

  @doc false
  def load_nif do
    dir = Path.join(:code.priv_dir(:snakepit), "native")
    # The guard program each worker's group guard execs (see snakepit_core's
    # spawn.rs); load info, so the NIF knows it before any spawn.
    guard = Path.join(dir, "snakepit_guard")
    :erlang.load_nif(String.to_charlist(Path.join(dir, "libsnakepit_native")), guard)
  end

  defp not_loaded, do: :erlang.nif_error(:nif_not_loaded)

  # -- processes -----------------------------------------------------------

  @doc """
  Spawns `program` (absolute path) with `argv` (argv[0] included), exactly
  the `env` pairs given, in its own session and process group. Output
  lines and the exit arrive at `owner` as
  `{:snakepit_process, os_pid, {:stdout | :stderr, line}}` and
  `{:snakepit_process, os_pid, {:exit, {:exited, code} | {:signaled, sig} | :unknown}}`.

  Options: `orphan_protection` (default true: a guard kills the process
  group when the VM dies) and `with_secret` (default false: add this VM's
  transport secret to the environment as `SNAKEPIT_AUTH_TOKEN`, for
  Snakepit's own Python processes only; the secret never enters the BEAM).
  """
  @spec spawn_process(
          String.t(),
          [String.t()],
          [{String.t(), String.t()}],
          String.t() | nil,
          pid(),
          %{orphan_protection: boolean(), with_secret: boolean()}
        ) ::
          {:ok, {pos_integer(), reference()}} | error()
  def spawn_process(_program, _argv, _env, _cwd, _owner, _opts), do: not_loaded()

  @doc "`spawn_process/6` with orphan protection and no secret."
  @spec spawn_process(
          String.t(),
          [String.t()],
          [{String.t(), String.t()}],
          String.t() | nil,
          pid()
        ) ::
          {:ok, {pos_integer(), reference()}} | error()
  def spawn_process(program, argv, env, cwd, owner),
    do:
      spawn_process(program, argv, env, cwd, owner, %{orphan_protection: true, with_secret: false})

  @doc """
  Connects to a fork server (`python -m snakepit_bridge.fork_server`)
  listening at `path`. The fork server exits when the handle is dropped.
  """
  @spec fork_server_connect(String.t()) :: {:ok, reference()} | error()
  def fork_server_connect(_path), do: not_loaded()

  @doc """
  Forks a worker from a fork server: `argv` and exactly `env` in `cwd`,
  with the same reply and messages to `owner` as `spawn_process/6`.
  """
  @spec fork_server_spawn(
          reference(),
          [String.t()],
          [{String.t(), String.t()}],
          String.t() | nil,
          pid()
        ) :: {:ok, {pos_integer(), reference()}} | error()
  def fork_server_spawn(_server, _argv, _env, _cwd, _owner), do: not_loaded()

  @doc "Releases the guard of a spawned process: its whole group is SIGKILLed if still running."
  @spec release_process(reference()) :: :ok
  def release_process(_handle), do: not_loaded()

  @doc """
  Flow control of a spawned process's output messages: the owner has
  handled `acked` more `{:stdout | :stderr, line}` messages and wants at
  most `window` unacknowledged (0: no limit, the default). Lines past the
  window are read and dropped, never queued; returns how many were dropped
  since the last call.
  """
  @spec process_output_ack(reference(), non_neg_integer(), non_neg_integer()) ::
          non_neg_integer()
  def process_output_ack(_handle, _acked, _window), do: not_loaded()

  @spec signal_process(integer(), integer()) :: :ok | error()
  def signal_process(_pid, _signal), do: not_loaded()

  @spec signal_group(integer(), integer()) :: :ok | error()
  def signal_group(_pgid, _signal), do: not_loaded()

  @spec process_alive(integer()) :: boolean()
  def process_alive(_pid), do: not_loaded()

  @spec process_group_of(integer()) :: {:ok, integer()} | error()
  def process_group_of(_pid), do: not_loaded()

  # -- gRPC client -----------------------------------------------------------

  @doc "Opens a lazily connected channel to `unix:/path` or `host:port`."
  @spec grpc_connect(String.t()) :: {:ok, reference()} | error()
  def grpc_connect(_address), do: not_loaded()

  @doc """
  Calls ExecuteTool. Returns `:ok` at once, or `{:error, {:invalid_argument,
  message}}` when the arguments cannot be encoded (nothing is sent). The
  result arrives as `{ref, {:ok, term} | {:error, reason}}`.
  """
  @spec grpc_execute(reference(), pid(), reference(), String.t(), term(), map()) ::
          :ok | error()
  def grpc_execute(_channel, _owner, _ref, _tool, _arguments, _opts), do: not_loaded()

  @doc "Sets the largest message (bytes) on every connection to and from workers."
  @spec set_max_message_bytes(pos_integer()) :: :ok
  def set_max_message_bytes(_bytes), do: not_loaded()

  @doc """
  Sets `max_nesting_depth` and `max_integer_digits` for every value the
  native core encodes or decodes (clamped to 1..2000 and 20..100_000);
  returns `{depth, digits}` as applied.
  """
  @spec set_value_limits(pos_integer(), pos_integer()) :: {pos_integer(), pos_integer()}
  def set_value_limits(_depth, _digits), do: not_loaded()

  @spec grpc_ping(reference(), pid(), reference(), String.t(), non_neg_integer()) :: :ok
  def grpc_ping(_channel, _owner, _ref, _message, _timeout_ms), do: not_loaded()

  @doc """
  Calls the worker's Heartbeat RPC. Returns `:ok` at once; the answer
  arrives as `{ref, {:ok, worker_timestamp_us}}` or `{ref, {:error, reason}}`.
  """
  @spec grpc_heartbeat(reference(), pid(), reference(), String.t(), non_neg_integer()) :: :ok
  def grpc_heartbeat(_channel, _owner, _ref, _worker_id, _timeout_ms), do: not_loaded()

  @doc """
  Asks the worker to stop the call `request_id` and to answer once it has
  ended or `wait_ms` passed: `{ref, {:ok, state}}` (the worker's state
  string, see `Snakepit.GRPC.Client.cancel/3`) or `{ref, {:error, reason}}`.
  """
  @spec grpc_cancel(reference(), pid(), reference(), String.t(), non_neg_integer()) :: :ok
  def grpc_cancel(_channel, _owner, _ref, _request_id, _wait_ms), do: not_loaded()

  @doc """
  Starts ExecuteStreamingTool. Chunks arrive as `{ref, {:chunk, data, is_final}}`
  only while credit lasts (`opts.window` at first, one more per `stream_ack/1`),
  then `{ref, :done}` or `{ref, {:error, reason}}`.
  """
  @spec grpc_execute_stream(
          reference(),
          pid(),
          reference(),
          String.t(),
          term(),
          map()
        ) ::
          {:ok, reference()} | error()
  def grpc_execute_stream(_channel, _owner, _ref, _tool, _arguments, _opts), do: not_loaded()

  @spec stream_ack(reference()) :: :ok
  def stream_ack(_stream), do: not_loaded()

  @spec stream_cancel(reference()) :: :ok
  def stream_cancel(_stream), do: not_loaded()

  # -- the call lane (see native/snakepit_native/src/lane) ----------------------

  @doc """
  Takes over the lane socket `fd` that a `gen_tcp` port connected to a
  worker's call lane (`:inet.getfd/1`; a Unix stream socket, anything else
  is refused) and greets the worker with this VM's secret. `{:ok, lane}`:
  calls are written through a descriptor of the lane's own, replies stay
  the port's to read and go to `lane_deliver/2`
  (`Snakepit.Transport.LaneReader`).
  """
  @spec lane_attach(non_neg_integer()) :: {:ok, reference()} | error()
  def lane_attach(_fd), do: not_loaded()

  @doc """
  Delivers one message the lane's port received (header and payload, the
  length prefix removed): decoded and sent to its caller as `{ref, result}`.
  `:ok`; `:collect` when the calling process should collect its heap now
  (the result built there held a zero-copy region or a large binary); an
  error when it is not a lane message.
  """
  @spec lane_deliver(reference(), binary()) :: :ok | :collect | error()
  def lane_deliver(_lane, _message), do: not_loaded()

  @doc "`lane_deliver/2` on a dirty CPU scheduler, for large messages."
  @spec lane_deliver_large(reference(), binary()) :: :ok | :collect | error()
  def lane_deliver_large(_lane, _message), do: not_loaded()

  @doc """
  Closes the lane: waiting callers get `{ref, {:error, {:unavailable,
  reason}}}`, later calls are refused with it.
  """
  @spec lane_close(reference(), String.t()) :: :ok
  def lane_close(_lane, _reason), do: not_loaded()

  @doc """
  Sends an `ExecuteTool` call on the lane: `{:ok, call_id}`, then one
  `{ref, result}` with the shapes of `grpc_execute/6`. The lane keeps no
  deadline: a caller that stops waiting calls `lane_forget/2`.
  """
  @spec lane_execute(reference(), pid(), reference(), String.t(), term(), map()) ::
          {:ok, non_neg_integer()} | error()
  def lane_execute(_lane, _owner, _ref, _tool, _arguments, _opts), do: not_loaded()

  @doc """
  Starts a streaming call on the lane: `{:ok, call_id}`, then
  `{ref, {:chunks, [{:chunk, data, is_final}, ...], :more | :done}}`, at
  most `opts.window` chunks ahead of `lane_stream_ack/3`; a tool's error or
  a lost worker as `{ref, {:error, reason}}`.
  """
  @spec lane_execute_stream(reference(), pid(), reference(), String.t(), term(), map()) ::
          {:ok, non_neg_integer()} | error()
  def lane_execute_stream(_lane, _owner, _ref, _tool, _arguments, _opts), do: not_loaded()

  @doc "The consumer of stream `call_id` handled `n` more chunks."
  @spec lane_stream_ack(reference(), non_neg_integer(), non_neg_integer()) :: :ok
  def lane_stream_ack(_lane, _call_id, _n), do: not_loaded()

  @doc "Stops stream `call_id` (the worker is told to stop producing); idempotent."
  @spec lane_stream_cancel(reference(), non_neg_integer()) :: :ok
  def lane_stream_cancel(_lane, _call_id), do: not_loaded()

  @doc "Forgets call `call_id`: a late reply is dropped."
  @spec lane_forget(reference(), non_neg_integer()) :: :ok
  def lane_forget(_lane, _call_id), do: not_loaded()

  # -- bridge server (Python calls Elixir) ----------------------------------------

  @doc """
  Starts the ElixirBridge gRPC server on `address` (`unix:/abs/path.sock`
  or `host:port`, loopback unless `allow_non_loopback`; port 0 picks
  one). Calls without the VM's secret are refused (`UNAUTHENTICATED`)
  and reported to `dispatcher` as `{:snakepit_auth_refused, reason}`. Every call Python makes
  arrives at `dispatcher` as `{:snakepit_bridge, call, rpc, request}` and
  waits for `bridge_reply/2`; calls without a budget of their own wait
  `default_timeout_ms`. Returns the handle and the bound address; the
  server stops with `bridge_stop/1` or when the handle is garbage.
  """
  @spec bridge_start(String.t(), pid(), pos_integer(), boolean()) ::
          {:ok, {reference(), String.t()}} | error()
  def bridge_start(_address, _dispatcher, _default_timeout_ms, _allow_non_loopback \\ false),
    do: not_loaded()

  @doc "Stops the bridge server; calls still waiting are answered `unavailable`. Idempotent."
  @spec bridge_stop(reference()) :: :ok
  def bridge_stop(_handle), do: not_loaded()

  @doc """
  Answers one bridge call (see `Snakepit.GRPC.BridgeServer` for the reply
  shapes). Runs on a dirty CPU scheduler: results are encoded to JSON here.
  """
  @spec bridge_reply(reference(), term()) ::
          :ok | error()
  def bridge_reply(_call, _reply), do: not_loaded()

  # -- worker telemetry streams (see Snakepit.Telemetry.GrpcStream) ----------

  @doc """
  Names the process that takes the events of a worker's telemetry stream
  (announced as `{:snakepit_telemetry_open, stream, worker_id}`): batches
  `{:snakepit_telemetry, stream, entries, %{dropped:, rejected:}}`, then
  `{:snakepit_telemetry_closed, stream}`. `:ended` when the stream is over.
  """
  @spec telemetry_attach(reference(), pid()) :: :ok | :ended
  def telemetry_attach(_stream, _sink), do: not_loaded()

  @doc "The batch in flight was handled: the stream may send the next."
  @spec telemetry_ack(reference()) :: :ok
  def telemetry_ack(_stream), do: not_loaded()

  @doc """
  Queues a control message for the worker (`{:toggle, bool}`, `{:sampling,
  rate, patterns}`, `{:filter, allow, deny}`, `{:forwarding, bool}`); it
  answers `{:ack, seq}` in its events once applied (`seq` 0: no answer).
  """
  @spec telemetry_control(reference(), tuple(), non_neg_integer()) :: :ok | error()
  def telemetry_control(_stream, _control, _seq), do: not_loaded()

  # -- zero-copy regions (see Snakepit.ZeroCopy) ------------------------------

  @doc """
  Turns zero copy on for this application start: `{:ok, limit}`, the most
  shared regions alive at once (`max_live`, lowered to what the process's
  descriptor and mapping limits allow). Regions under `inline_below`
  bytes stay on the heap; workers may hand over at most `max_bytes` (0: no
  limit).
  """
  @spec zero_copy_enable(pos_integer(), non_neg_integer(), non_neg_integer()) ::
          {:ok, pos_integer()}
  def zero_copy_enable(_max_live, _inline_below, _max_bytes), do: not_loaded()

  @doc "Turns zero copy off; shared regions of the start that ends can no longer be sent."
  @spec zero_copy_disable() :: :ok
  def zero_copy_disable, do: not_loaded()

  @doc """
  Copies `data` into a new region (dirty CPU scheduler): `{:ok,
  %Snakepit.ZeroCopyRef{}}`. The caller has checked `dtype` and `shape`.
  """
  @spec zero_copy_create(:dlpack | :arrow, binary(), String.t() | nil, [non_neg_integer()] | nil) ::
          {:ok, Snakepit.ZeroCopyRef.t()} | error()
  def zero_copy_create(_kind, _data, _dtype, _shape), do: not_loaded()

  @doc "A binary backed by the region (no copy), or `{:error, {:closed, msg}}`."
  @spec zero_copy_binary(reference()) :: {:ok, binary()} | error()
  def zero_copy_binary(_region), do: not_loaded()

  @doc "Closes the region's memory file (it can no longer be sent). Idempotent."
  @spec zero_copy_close(reference()) :: :ok
  def zero_copy_close(_region), do: not_loaded()

  @doc false
  @spec zero_copy_region_info(reference()) :: {boolean(), String.t() | nil}
  def zero_copy_region_info(_region), do: not_loaded()

  @doc "`{regions, bytes, shared, shared_limit}` alive in this VM."
  @spec zero_copy_live() ::
          {non_neg_integer(), non_neg_integer(), non_neg_integer(), non_neg_integer()}
  def zero_copy_live, do: not_loaded()
end
