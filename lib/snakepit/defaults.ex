defmodule Snakepit.Defaults do
  @moduledoc """
  Every configurable default in one place.

  Each function returns the value of `config :snakepit, key: ...` when it is
  set and the built-in default otherwise, so an operator can override any of
  them without touching code, and Snakepit behaves the same as before when
  nothing is configured.

      # config/runtime.exs
      config :snakepit,
        timeout_profile: :production,
        pool_queue_timeout: 5_000,
        pool_max_queue_size: 1000,
        heartbeat_ping_interval_ms: 2_000

  ## Timeout profiles

  The three headline budgets come from `config :snakepit, timeout_profile: ...`:

  | profile              | default_timeout | stream_timeout | queue_timeout |
  |----------------------|-----------------|----------------|---------------|
  | `:balanced` (default)| 300_000         | 900_000        | 10_000        |
  | `:production`        | 300_000         | 900_000        | 10_000        |
  | `:production_strict` | 60_000          | 300_000        | 5_000         |
  | `:development`       | 900_000         | 3_600_000      | 60_000        |
  | `:ml_inference`      | 900_000         | 3_600_000      | 60_000        |
  | `:batch`             | 3_600_000       | `:infinity`    | 300_000       |

  The per-key settings that existed before profiles (`pool_request_timeout`,
  `pool_streaming_timeout`, `pool_queue_timeout`, `checkout_timeout`,
  `grpc_command_timeout`) still work and
  take precedence over the profile when set; when not set they derive from
  the profile.

  ## Inner and outer timeouts

  `rpc_timeout/1` turns a caller's total budget into the budget of the call
  to Python by reserving `worker_call_margin_ms/0` and
  `pool_reply_margin_ms/0`, so the inner timeout always fires first and the
  caller gets a structured `{:error, %Snakepit.Error{category: :timeout}}`
  instead of an exit.

  ## Upstream names

  Upstream's keys for a setting this implementation has set it (the
  current key wins when both are set):

  | upstream key | sets |
  |---|---|
  | `default_command_timeout` | `pool_request_timeout/0` |
  | `pool_startup_timeout`, `worker_init_timeout` | `grpc_server_ready_timeout/0` |
  | `health_check_interval`, `worker_health_check_interval`, `grpc_worker_health_check_interval` | `lifecycle_health_check_interval/0` |
  | `worker_shutdown_grace_period` | `graceful_shutdown_timeout_ms/0` |
  | `cleanup_retry_interval` | `cleanup_poll_interval_ms/0` |
  | `grpc_internal_host` | `tcp_host/0` |
  | `session_config: %{ttl: ..., cleanup_interval: ...}` | `session_default_ttl/0`, `session_cleanup_interval/0` |

  The getters listed by `inert/0` return settings nothing here reads;
  `Snakepit.Config.Compat` warns at start when one is set and names what
  does that job. `docs/compatibility.md` has both lists.
  """

  @profiles %{
    balanced: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production_strict: %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000},
    development: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    ml_inference: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    batch: %{default_timeout: 3_600_000, stream_timeout: :infinity, queue_timeout: 300_000}
  }

  # {function, config keys (first set wins), default, spec, doc}
  @plain [
    {:bridge_call_timeout_ms, [:bridge_call_timeout_ms], 10_000, quote(do: pos_integer()),
     "How long (ms) a tool-bridge call other than a tool call (registration, sessions, " <>
       "heartbeats) may take."},
    {:bridge_tool_timeout_ms, [:bridge_tool_timeout_ms], 30_000, quote(do: pos_integer()),
     "How long (ms) an Elixir tool called from Python may run when the call carries no budget."},
    {:cancel_grace_ms, [:cancel_grace_ms], 2_000, quote(do: non_neg_integer()),
     "How long (ms) a call whose caller gave up (its deadline passed, it died, its stream " <>
       "was halted) may keep running in Python after it was told to stop (an async tool is " <>
       "cancelled, a sync tool gets `CallCancelled` raised in its thread). Past it the worker " <>
       "is killed and replaced; its slot is not reused before either."},
    {:circuit_breaker_failure_threshold, [:circuit_breaker_failure_threshold], 5,
     quote(do: pos_integer()), "Failures before a `Snakepit.CircuitBreaker` opens."},
    {:circuit_breaker_half_open_max_calls, [:circuit_breaker_half_open_max_calls], 1,
     quote(do: pos_integer()), "Calls a half-open `Snakepit.CircuitBreaker` lets through."},
    {:circuit_breaker_reset_timeout_ms,
     [:circuit_breaker_reset_timeout_ms, :circuit_breaker_reset_timeout], 30_000,
     quote(do: pos_integer()), "Time (ms) an open circuit waits before going half-open."},
    {:config_default_batch_delay, [:config_default_batch_delay], 750, quote(do: pos_integer()),
     "Default `startup_batch_delay_ms` of a process-profile pool."},
    {:config_default_batch_size, [:config_default_batch_size], 8, quote(do: pos_integer()),
     "Default `startup_batch_size` of a process-profile pool."},
    {:config_default_threads_per_worker, [:config_default_threads_per_worker], 10,
     quote(do: pos_integer()), "Default `threads_per_worker` of a thread-profile pool."},
    {:crash_barrier_backoff_ms, [:crash_barrier_backoff_ms], [50, 100, 200],
     quote(do: [pos_integer()]), "Backoff (ms) before each crash-barrier retry."},
    {:crash_barrier_checkout_timeout, [:crash_barrier_checkout_timeout], 5_000,
     quote(do: timeout()), "Time (ms) a crash-barrier retry may wait for another worker."},
    {:crash_barrier_max_restarts, [:crash_barrier_max_restarts], 1, quote(do: pos_integer()),
     "Retries of an idempotent call after its worker crashed."},
    {:crash_barrier_taint_duration_ms, [:crash_barrier_taint_duration_ms], 60_000,
     quote(do: pos_integer()), "How long (ms) a worker that crashed stays tainted."},
    {:default_affinity_mode, [:default_affinity_mode, :affinity], :hint,
     quote(do: :hint | :strict_queue | :strict_fail_fast),
     """
     Default session affinity mode of a pool:

       * `:hint` - prefer the session's last worker when it is free, else any worker
       * `:strict_queue` - wait in the queue for the session's worker
       * `:strict_fail_fast` - fail with reason `:worker_busy` when it is busy
     """},
    {:default_worker_profile, [:default_worker_profile], :process, quote(do: :process | :thread),
     "Default worker profile of a pool."},
    {:executor_batch_timeout, [:executor_batch_timeout], 30_000, quote(do: timeout()),
     "Timeout (ms) of `Snakepit.Executor.execute_batch/2`."},
    {:fork_server, [:fork_server], true, quote(do: boolean()),
     "Start workers by forking them from one warm Python process per " <>
       "interpreter and environment (`Snakepit.ForkServer`), which imported grpc and the " <>
       "bridge once, instead of starting a fresh interpreter for each. `false` spawns each " <>
       "worker directly."},
    {:graceful_shutdown_timeout_ms,
     [:graceful_shutdown_timeout_ms, :worker_shutdown_grace_period], 6_000,
     quote(do: pos_integer()),
     "How long (ms) a Python worker gets to exit after SIGTERM before SIGKILL. At least the " <>
       "worker's own shutdown envelope (server stop 2 s + adapter cleanup)."},
    {:grpc_server_ready_timeout,
     [:grpc_server_ready_timeout, :pool_startup_timeout, :worker_init_timeout], 30_000,
     quote(do: timeout()), "How long (ms) a worker may take to report ready."},
    {:health_monitor_crash_window_ms, [:health_monitor_crash_window_ms], 60_000,
     quote(do: pos_integer()), "Rolling crash window (ms) of `Snakepit.HealthMonitor`."},
    {:health_monitor_max_crashes, [:health_monitor_max_crashes], 10, quote(do: pos_integer()),
     "Crashes in the window before a pool counts as unhealthy."},
    {:heartbeat_initial_delay_ms, [:heartbeat_initial_delay_ms], 0, quote(do: non_neg_integer()),
     "Delay (ms) before a worker's first heartbeat."},
    {:heartbeat_max_missed, [:heartbeat_max_missed, :heartbeat_max_missed_heartbeats], 3,
     quote(do: pos_integer()), "Consecutive missed heartbeats before a worker is unhealthy."},
    {:heartbeat_ping_interval_ms, [:heartbeat_ping_interval_ms], 2_000, quote(do: pos_integer()),
     "Interval (ms) between heartbeats."},
    {:heartbeat_timeout_ms, [:heartbeat_timeout_ms], 10_000, quote(do: pos_integer()),
     "Time (ms) a heartbeat may take to be answered."},
    {:instance_token, [:instance_token], nil, quote(do: String.t() | nil),
     "Instance token for runtime isolation."},
    {:lifecycle_check_interval, [:lifecycle_check_interval], 60_000, quote(do: pos_integer()),
     "Interval (ms) of `Snakepit.Worker.LifecycleManager`'s TTL and memory checks."},
    {:lifecycle_health_check_interval,
     [
       :lifecycle_health_check_interval,
       :grpc_worker_health_check_interval,
       :health_check_interval,
       :worker_health_check_interval
     ], 300_000, quote(do: pos_integer()),
     "Interval (ms) of the lifecycle manager's health checks."},
    {:max_message_bytes, [:max_message_bytes], 268_435_456, quote(do: pos_integer()),
     "Largest message (bytes) between the VM and its workers, both ways, on every " <>
       "connection (calls, replies, stream chunks, the tool bridge). A call over it is " <>
       "refused before anything is sent, a reply over it comes back as an error naming " <>
       "the limit. Large arrays and tables are better passed as `Snakepit.ZeroCopy` " <>
       "references."},
    {:python_log_level, [:python_log_level], :warning,
     quote(do: :debug | :info | :warning | :error | :none),
     "Lowest level of the workers' Python `logging` records sent to Elixir's `Logger` " <>
       "(Python's own default, `:warning`; `:none` sends none). Records arrive at the " <>
       "mapped level (DEBUG to `:debug`, INFO to `:info`, WARNING to `:warning`, ERROR and " <>
       "CRITICAL to `:error`) with metadata; see `Snakepit.Worker.PythonLog`."},
    {:max_nesting_depth, [:max_nesting_depth], 1_000, quote(do: pos_integer()),
     "How deep values may nest, both ways (arguments, results, stream chunks, the tool " <>
       "bridge), in the native core and in the workers alike: maps, lists and tuples " <>
       "(Python dicts, lists, tuples) count one level each, the outermost being 1; scalars, " <>
       "big integers and zero-copy refs count nothing. A deeper argument is refused before " <>
       "anything is sent (`:validation`, naming the limit and the path to the value), a " <>
       "deeper result comes back as an error for that call. The JSON on the wire may be up " <>
       "to 8 levels deeper, for the wrappers Snakepit itself adds (zero-copy markers, " <>
       "integer markers). 1 to 2000: nothing in Snakepit recurses on the data, but a " <>
       "worker's JSON codecs and a zero-copy ref's metadata still do, within that."},
    {:max_integer_digits, [:max_integer_digits], 4_300, quote(do: pos_integer()),
     "The longest integer (decimal digits) either way. A longer one in the arguments is " <>
       "refused before anything is sent (`:validation`), in a result it fails the call. " <>
       "The default is Python's own limit on int/str conversion; each worker sets " <>
       "`sys.set_int_max_str_digits` to it at start and its serializer checks it itself, " <>
       "so what a tool does to that setting changes nothing. 20 to 100_000."},
    {:pool_await_ready_timeout, [:pool_await_ready_timeout], 15_000, quote(do: timeout()),
     "Default timeout (ms) of `Snakepit.Pool.await_ready/2`."},
    {:pool_max_queue_size, [:pool_max_queue_size], 1000, quote(do: pos_integer()),
     "Most requests that may wait in one pool's queue; more are refused as `:pool_saturated`."},
    {:pool_max_workers, [:pool_max_workers], 150, quote(do: pos_integer()),
     "Most workers one pool may have."},
    {:pool_reply_margin_ms, [:pool_reply_margin_ms], 200, quote(do: pos_integer()),
     "Margin (ms) reserved for the pool's reply, subtracted by `rpc_timeout/1`."},
    {:pool_status_interval_ms, [:pool_status_interval_ms], 5_000, quote(do: non_neg_integer()),
     "How often (ms) each pool emits `[:snakepit, :pool, :status]` (worker and queue counts); " <>
       "0 turns it off."},
    {:retry_backoff_multiplier, [:retry_backoff_multiplier], 2.0, quote(do: float()),
     "Multiplier of exponential retry backoff."},
    {:retry_backoff_sequence, [:retry_backoff_sequence], [100, 200, 400, 800, 1600],
     quote(do: [pos_integer()]), "Default backoff sequence (ms) of retries."},
    {:retry_base_backoff_ms, [:retry_base_backoff_ms], 100, quote(do: pos_integer()),
     "Base backoff (ms) of retries."},
    {:retry_jitter_factor, [:retry_jitter_factor], 0.25, quote(do: float()),
     "Jitter factor of retry delays."},
    {:retry_max_attempts, [:retry_max_attempts], 3, quote(do: pos_integer()),
     "Default maximum retry attempts."},
    {:retry_max_backoff_ms, [:retry_max_backoff_ms], 30_000, quote(do: pos_integer()),
     "Longest retry backoff (ms)."},
    {:session_cleanup_interval, [:session_cleanup_interval, {:session_config, :cleanup_interval}],
     60_000, quote(do: pos_integer()),
     "Interval (ms) of `Snakepit.Bridge.SessionStore`'s expiry sweep."},
    {:session_default_ttl, [:session_default_ttl, {:session_config, :ttl}], 3600,
     quote(do: pos_integer()), "Default session TTL in seconds."},
    {:session_max_sessions, [:session_max_sessions], 10_000, quote(do: pos_integer() | :infinity),
     "Most sessions the session store holds."},
    {:session_warning_threshold, [:session_warning_threshold], 0.8, quote(do: float()),
     "Fraction of `session_max_sessions` above which a warning is logged."},
    {:stream_window, [:stream_window], 32, quote(do: pos_integer()),
     "Stream chunks that may be in flight ahead of the consumer."},
    {:telemetry_memory_interval_ms, [:telemetry_memory_interval_ms], 10_000,
     quote(do: non_neg_integer()),
     "How often (ms) each worker emits `[:snakepit, :python, :memory, :sampled]` while " <>
       "someone listens to Python events; 0 turns it off."},
    {:call_transport, [:call_transport], :lane, quote(do: :lane | :grpc),
     "How calls and streams reach workers, for pools that do not set `call_transport`: " <>
       "`:lane` or `:grpc`."},
    {:worker_transport, [:worker_transport], :unix, quote(do: :unix | :tcp),
     "Transport of the workers' servers and the bridge server: `:unix` (sockets in the " <>
       "private runtime directory) or `:tcp` (loopback)."},
    {:tcp_host, [:tcp_host, :grpc_internal_host], "127.0.0.1", quote(do: String.t()),
     "Address the workers' servers and the bridge server bind to under `worker_transport: " <>
       ":tcp`. Must be a loopback address unless `allow_non_loopback_bind: true` (see the " <>
       "README's threat model)."},
    {:allow_non_loopback_bind, [:allow_non_loopback_bind], false, quote(do: boolean()),
     "Let `tcp_host` be an address other machines can reach. Every call still needs the " <>
       "VM's secret, but the traffic is not encrypted; Snakepit logs a warning at start."},
    {:worker_call_margin_ms, [:worker_call_margin_ms], 1_000, quote(do: pos_integer()),
     "Margin (ms) reserved for routing a call to its worker, subtracted by `rpc_timeout/1`."},
    {:worker_restart_backoff_base_ms, [:worker_restart_backoff_base_ms], 100,
     quote(do: non_neg_integer()),
     "Wait (ms) before restarting a worker slot after its second failure in a row; it " <>
       "doubles with each further failure (see `Snakepit.Pool.Worker.Starter`)."},
    {:worker_restart_backoff_max_ms, [:worker_restart_backoff_max_ms], 30_000,
     quote(do: non_neg_integer()),
     "Longest wait (ms) between restarts of a failing worker slot. Slots are restarted " <>
       "for as long as the pool lives."},
    {:worker_restart_stable_ms, [:worker_restart_stable_ms], 1_000, quote(do: non_neg_integer()),
     "A worker that was ready this long (ms) before it ended is restarted at once, and its " <>
       "slot's failures in a row start over."},
    {:worker_supervisor_max_restarts, [:worker_supervisor_max_restarts], 3,
     quote(do: non_neg_integer()), "Restart intensity of the worker supervisor."},
    {:worker_supervisor_max_seconds, [:worker_supervisor_max_seconds], 5,
     quote(do: pos_integer()), "Window (s) of `worker_supervisor_max_restarts/0`."}
  ]

  for {name, keys, default, spec, doc} <- @plain do
    @doc """
    #{doc}

    Config key: `#{Enum.map_join(keys, "` (or `", &inspect/1)}#{if length(keys) > 1, do: "`)", else: "`"}; default: `#{inspect(default)}`.
    """
    @spec unquote(name)() :: unquote(spec)
    def unquote(name)(), do: get(unquote(keys), unquote(Macro.escape(default)))
  end

  # Timeouts that derive from the profile unless their legacy key is set.
  @derived [
    {:pool_request_timeout, :default_timeout, :identity,
     "Total budget (ms) of `Snakepit.execute/3`."},
    {:pool_streaming_timeout, :stream_timeout, :identity,
     "Total budget (ms) of `Snakepit.execute_stream/4`."},
    {:pool_queue_timeout, :queue_timeout, :identity,
     "How long (ms) a request may wait in a pool's queue."},
    {:checkout_timeout, :queue_timeout, :identity,
     "How long (ms) a streaming call may wait for a worker."},
    {:grpc_command_timeout, :default_timeout, :rpc,
     "Default command timeout (ms) of `Snakepit.Adapters.GRPCPython`."}
  ]

  # Upstream names that set a derived timeout too (the first set wins).
  @derived_aliases %{pool_request_timeout: [:default_command_timeout]}

  for {name, source, how, doc} <- @derived do
    keys = [name | Map.get(@derived_aliases, name, [])]

    {derivation, body} =
      case how do
        :identity -> {"`#{source}/0`", quote(do: unquote(source)())}
        :rpc -> {"`rpc_timeout(#{source}())`", quote(do: rpc_timeout(unquote(source)()))}
      end

    @doc """
    #{doc}

    Config key: `#{Enum.map_join(keys, "` (or `", &inspect/1)}#{if length(keys) > 1, do: "`)", else: "`"}; when not set, #{derivation} of the active
    timeout profile.
    """
    @spec unquote(name)() :: timeout()
    def unquote(name)() do
      case get(unquote(keys), :unset) do
        :unset -> unquote(body)
        value -> value
      end
    end
  end

  @doc """
  Default timeout (ms) of `Snakepit.GRPC.Client.execute/3` (a call on a
  connection from `Snakepit.GRPCWorker.get_channel/1`): the
  `grpc_client_execute_timeout` key, else `grpc_command_timeout/0`.
  """
  @spec grpc_client_execute_timeout() :: timeout()
  def grpc_client_execute_timeout do
    case Application.fetch_env(:snakepit, :grpc_client_execute_timeout) do
      {:ok, value} -> value
      :error -> grpc_command_timeout()
    end
  end

  # -- upstream getters ----------------------------------------------------------
  #
  # The rest of upstream's documented getters. {function, config keys (first
  # set wins), default, spec, doc}; `:inert` as the doc marks a setting that
  # nothing here reads: it is accepted, and Snakepit.Config.Compat warns once
  # at start that it has no effect and names what does its job.
  @inert_doc "Accepted for compatibility: nothing reads it, and setting it logs a warning at " <>
               "start that names what does this job here (see `Snakepit.Config.Compat` and " <>
               "`docs/compatibility.md`)."

  @upstream [
    {:affinity_cache_ttl_seconds, [:affinity_cache_ttl_seconds], 60, quote(do: pos_integer()),
     :inert},
    {:cleanup_on_stop_timeout_ms, [:cleanup_on_stop_timeout_ms], 1_000, quote(do: pos_integer()),
     "How long (ms) the last cleanup pass at shutdown (`Snakepit.Pool.ApplicationCleanup`) " <>
       "waits for what is left of this run after SIGTERM, before SIGKILL."},
    {:cleanup_poll_interval_ms, [:cleanup_poll_interval_ms, :cleanup_retry_interval], 10,
     quote(do: pos_integer()),
     "How often (ms) a wait for OS processes to exit looks again (`Snakepit.ProcessKiller`, " <>
       "the cleanup passes)."},
    {:default_capacity_strategy, [:default_capacity_strategy], :pool,
     quote(do: :pool | :profile | :hybrid),
     "Default `capacity_strategy` of a pool (accepted for compatibility; a strategy other than " <>
       "`:pool` has no effect and a warning says so once)."},
    {:grpc_batch_inference_timeout, [:grpc_batch_inference_timeout], 300_000,
     quote(do: timeout()),
     "Default timeout (ms) of a `batch_inference` command sent with " <>
       "`Snakepit.Adapters.GRPCPython.grpc_execute/6` (its `command_timeout/2`)."},
    {:grpc_large_dataset_timeout, [:grpc_large_dataset_timeout], 600_000, quote(do: timeout()),
     "Default timeout (ms) of a `process_large_dataset` command sent with " <>
       "`Snakepit.Adapters.GRPCPython.grpc_execute/6` (its `command_timeout/2`)."},
    {:grpc_listener_port_check_interval_ms, [:grpc_listener_port_check_interval_ms], 25,
     quote(do: pos_integer()), :inert},
    {:grpc_listener_ready_timeout_ms, [:grpc_listener_ready_timeout_ms], 5_000,
     quote(do: pos_integer()), :inert},
    {:grpc_listener_reuse_attempts, [:grpc_listener_reuse_attempts], 3, quote(do: pos_integer()),
     :inert},
    {:grpc_listener_reuse_retry_delay_ms, [:grpc_listener_reuse_retry_delay_ms], 100,
     quote(do: pos_integer()), :inert},
    {:grpc_listener_reuse_wait_timeout_ms, [:grpc_listener_reuse_wait_timeout_ms], 500,
     quote(do: pos_integer()), :inert},
    {:grpc_max_connections, [:grpc_max_connections], 1000, quote(do: pos_integer()), :inert},
    {:grpc_num_acceptors, [:grpc_num_acceptors], 20, quote(do: pos_integer()), :inert},
    {:grpc_port, [:grpc_port], 50_051, quote(do: pos_integer()),
     "The legacy `grpc_port` key: the bridge listens on this TCP port when it is set (see " <>
       "`Snakepit.Config.Listener`; `grpc_listener` is the current way)."},
    {:grpc_port_pool_size, [:grpc_port_pool_size], 32, quote(do: pos_integer()), :inert},
    {:grpc_socket_backlog, [:grpc_socket_backlog], 512, quote(do: pos_integer()), :inert},
    {:health_monitor_check_interval, [:health_monitor_check_interval], 30_000,
     quote(do: pos_integer()),
     "How often (ms) a `Snakepit.HealthMonitor` drops crashes older than its window, when " <>
       "started without `:check_interval_ms`."},
    {:pool_cancelled_retention_multiplier, [:pool_cancelled_retention_multiplier], 4,
     quote(do: pos_integer()), :inert},
    {:pool_max_cancelled_entries, [:pool_max_cancelled_entries], 1024, quote(do: pos_integer()),
     :inert},
    {:pool_reconcile_batch_size, [:pool_reconcile_batch_size], 2, quote(do: pos_integer()),
     :inert},
    {:pool_reconcile_interval_ms, [:pool_reconcile_interval_ms], 1_000,
     quote(do: non_neg_integer()), :inert},
    {:process_registry_cleanup_interval, [:process_registry_cleanup_interval], 30_000,
     quote(do: pos_integer()), :inert},
    {:process_registry_unregister_cleanup_attempts,
     [:process_registry_unregister_cleanup_attempts], 10, quote(do: pos_integer()), :inert},
    {:process_registry_unregister_cleanup_delay, [:process_registry_unregister_cleanup_delay],
     500, quote(do: pos_integer()), :inert},
    {:shutdown_margin_ms, [:shutdown_margin_ms], 3_000, quote(do: pos_integer()),
     "Margin (ms) added to `graceful_shutdown_timeout_ms/0` for a worker's supervisor " <>
       "shutdown time (`Snakepit.GRPCWorker.supervisor_shutdown_timeout/0`): room for the " <>
       "SIGKILL that may follow the graceful window."},
    {:worker_ready_timeout, [:worker_ready_timeout], 30_000, quote(do: timeout()), :inert},
    {:worker_starter_max_restarts, [:worker_starter_max_restarts], 3,
     quote(do: non_neg_integer()), :inert},
    {:worker_starter_max_seconds, [:worker_starter_max_seconds], 5, quote(do: pos_integer()),
     :inert}
  ]

  for {name, keys, default, spec, doc} <- @upstream do
    @doc """
    #{if doc == :inert, do: @inert_doc, else: doc}

    Config key: `#{Enum.map_join(keys, "` (or `", &inspect/1)}#{if length(keys) > 1, do: "`)", else: "`"}; default: `#{inspect(default)}`.
    """
    @spec unquote(name)() :: unquote(spec)
    def unquote(name)(), do: get(unquote(keys), unquote(Macro.escape(default)))
  end

  @doc """
  The getters documented upstream whose setting nothing here reads (see
  `Snakepit.Config.Compat`).
  """
  @spec inert() :: [atom()]
  def inert, do: for({name, _, _, _, :inert} <- @upstream, do: name)

  @doc """
  Upstream's command timeout: the `default_command_timeout` key, else the
  call-to-Python share (`rpc_timeout/1`) of `pool_request_timeout/0`. The
  same key sets `pool_request_timeout/0` when that one is not set.
  """
  @spec default_command_timeout() :: timeout()
  def default_command_timeout,
    do: get([:default_command_timeout], nil) || rpc_timeout(pool_request_timeout())

  @doc """
  Default timeout (ms) of `Snakepit.GRPCWorker.execute/3-5` and
  `execute_in_session/4-6`, direct calls to one worker: the
  `grpc_worker_execute_timeout` key, else `rpc_timeout(default_timeout())`.
  """
  @spec grpc_worker_execute_timeout() :: timeout()
  def grpc_worker_execute_timeout,
    do: get([:grpc_worker_execute_timeout], nil) || rpc_timeout(default_timeout())

  @doc """
  Default timeout (ms) of `Snakepit.GRPCWorker.execute_stream/4-6`: the
  `grpc_worker_stream_timeout` key, else `stream_timeout/0`.
  """
  @spec grpc_worker_stream_timeout() :: timeout()
  def grpc_worker_stream_timeout,
    do: get([:grpc_worker_stream_timeout], nil) || stream_timeout()

  @doc """
  How long (ms) a worker may take to start: `grpc_server_ready_timeout/0`,
  which the upstream keys `pool_startup_timeout` and `worker_init_timeout`
  also set.
  """
  @spec pool_startup_timeout() :: timeout()
  def pool_startup_timeout, do: grpc_server_ready_timeout()

  @doc """
  Interval (ms) of the periodic worker health check:
  `lifecycle_health_check_interval/0`, which the upstream keys
  `grpc_worker_health_check_interval`, `health_check_interval` and
  `worker_health_check_interval` also set.
  """
  @spec grpc_worker_health_check_interval() :: pos_integer()
  def grpc_worker_health_check_interval, do: lifecycle_health_check_interval()

  @doc """
  Host of listeners that stay on this machine: `tcp_host/0`, which the
  upstream key `grpc_internal_host` also sets.
  """
  @spec grpc_internal_host() :: String.t()
  def grpc_internal_host, do: tcp_host()

  @doc """
  Workers started at once by a process-profile pool that sets no
  `startup_batch_size`: the `pool_startup_batch_size` key, else
  `config_default_batch_size/0`.
  """
  @spec pool_startup_batch_size() :: pos_integer()
  def pool_startup_batch_size,
    do: get([:pool_startup_batch_size], nil) || config_default_batch_size()

  @doc """
  Longest wait (ms) between startup batches of a process-profile pool that
  sets no `startup_batch_delay_ms`: the `pool_startup_batch_delay_ms` key,
  else `config_default_batch_delay/0`.
  """
  @spec pool_startup_batch_delay_ms() :: non_neg_integer()
  def pool_startup_batch_delay_ms,
    do: get([:pool_startup_batch_delay_ms], nil) || config_default_batch_delay()

  # A key is a top-level key or {key, inner}, an entry of an upstream map
  # setting (`session_config: %{ttl: ...}`).
  defp get([{key, inner} | rest], default) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, map} when is_map(map) and is_map_key(map, inner) -> Map.fetch!(map, inner)
      {:ok, [{_, _} | _] = kw} -> Keyword.get_lazy(kw, inner, fn -> get(rest, default) end)
      _ -> get(rest, default)
    end
  end

  defp get([key | rest], default) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, value} -> value
      :error -> get(rest, default)
    end
  end

  defp get([], default), do: default

  # -- profiles -----------------------------------------------------------------

  @doc """
  All timeout profiles, each with `default_timeout`, `stream_timeout` and
  `queue_timeout`.

      iex> Snakepit.Defaults.timeout_profiles().production_strict
      %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000}
  """
  @spec timeout_profiles() :: %{required(atom()) => %{required(atom()) => timeout()}}
  def timeout_profiles, do: @profiles

  @doc """
  The active profile (`config :snakepit, timeout_profile: ...`); `:balanced`
  when none or an unknown one is configured.
  """
  @spec timeout_profile() :: atom()
  def timeout_profile do
    profile = Application.get_env(:snakepit, :timeout_profile, :balanced)
    if Map.has_key?(@profiles, profile), do: profile, else: :balanced
  end

  @doc """
  Total budget (ms) of a regular call under the active profile. The
  `default_timeout` key, when set, wins.
  """
  @spec default_timeout() :: timeout()
  def default_timeout, do: profiled(:default_timeout)

  @doc "Total budget (ms) of a streaming call under the active profile (`stream_timeout` key wins)."
  @spec stream_timeout() :: timeout()
  def stream_timeout, do: profiled(:stream_timeout)

  @doc "Queue budget (ms) under the active profile (`queue_timeout` key wins)."
  @spec queue_timeout() :: timeout()
  def queue_timeout, do: profiled(:queue_timeout)

  defp profiled(key) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, value} -> value
      :error -> @profiles[timeout_profile()][key]
    end
  end

  @doc """
  The budget of the inner call to Python out of a `total_timeout`:
  `total_timeout - worker_call_margin_ms() - pool_reply_margin_ms()`.

  Budgets too small to hold both margins (under ten times their sum) keep
  90% of the total instead, so the result stays positive and grows with the
  total.

      iex> Snakepit.Defaults.rpc_timeout(60_000)
      58_800
      iex> Snakepit.Defaults.rpc_timeout(:infinity)
      :infinity
      iex> Snakepit.Defaults.rpc_timeout(1_000)
      900
  """
  @spec rpc_timeout(timeout()) :: timeout()
  def rpc_timeout(:infinity), do: :infinity

  def rpc_timeout(total) when is_integer(total) and total >= 0 do
    margins = worker_call_margin_ms() + pool_reply_margin_ms()
    max(total - min(margins, div(total, 10)), 0)
  end

  # -- others -------------------------------------------------------------------

  @doc """
  Pool size when none is configured: the `pool_size` key, else two workers
  per online scheduler.
  """
  @spec default_pool_size() :: pos_integer()
  def default_pool_size,
    do: Application.get_env(:snakepit, :pool_size, System.schedulers_online() * 2)

  @doc "The Python adapter class a worker loads when none is configured."
  @spec default_python_adapter() :: String.t()
  def default_python_adapter, do: "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
end
