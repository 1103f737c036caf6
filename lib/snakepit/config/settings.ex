defmodule Snakepit.Config.Settings do
  @intro """
  The one table of global settings: every top-level key of `config
  :snakepit` that is not a pool's own key (those are in
  `Snakepit.Config.Schema`), with the config keys that set it (the first
  set wins; `{key, inner}` is an entry of an upstream map setting), its
  default, its type and its documentation.

  `Snakepit.Defaults` generates one getter per entry from it, so a setting
  is read in one way everywhere; `check/1` checks a configuration against
  it at application start: a value of the wrong type stops the start with
  a message naming the key, what it must be and what it is, and a key no
  table knows is named in a warning (with the nearest known key), once per
  VM, instead of being ignored without a word.

  Entries whose default is `:computed` have a getter written by hand in
  `Snakepit.Defaults` or `Snakepit.Config` (derived from the timeout profile,
  from an environment variable, from another setting); the table still
  gives their type and their documentation.
  """

  require Logger

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
       "interpreter and environment (`Snakepit.Worker.ForkServer`), which imported grpc and the " <>
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
    {:max_nesting_depth, [:max_nesting_depth], 1_000, quote(do: 1..2000),
     "How deep values may nest, both ways (arguments, results, stream chunks, the tool " <>
       "bridge), in the native core and in the workers alike: maps, lists and tuples " <>
       "(Python dicts, lists, tuples) count one level each, the outermost being 1; scalars, " <>
       "big integers and zero-copy refs count nothing. A deeper argument is refused before " <>
       "anything is sent (`:validation`, naming the limit and the path to the value), a " <>
       "deeper result comes back as an error for that call. The JSON on the wire may be up " <>
       "to 8 levels deeper, for the wrappers Snakepit itself adds (zero-copy markers, " <>
       "integer markers). 1 to 2000: nothing in Snakepit recurses on the data, but a " <>
       "worker's JSON codecs and a zero-copy ref's metadata still do, within that."},
    {:max_integer_digits, [:max_integer_digits], 4_300, quote(do: 20..100_000),
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

  # Settings with structure of their own (a keyword list or map checked
  # further by the module that owns it) and settings whose getter is
  # written by hand (`:computed`). Same shape as above.
  @structured [
    {:pools, [:pools], nil, quote(do: [map() | keyword()] | nil),
     "The pools, each a map or keyword list of the keys in `Snakepit.Config` (the first is " <>
       "the default pool); when not set, one `:default` pool from the legacy top-level keys."},
    {:pool_config, [:pool_config], %{}, quote(do: map() | keyword()),
     "Legacy single-pool configuration: per-pool keys for the `:default` pool."},
    {:pooling_enabled, [:pooling_enabled], true, quote(do: boolean()),
     "Start the configured pools with the application; `false` starts only the shared " <>
       "services (pools may still be started in the host's own tree)."},
    {:heartbeat, [:heartbeat], %{}, quote(do: map() | keyword()),
     "Heartbeat overrides for every pool (see `Snakepit.Config.heartbeat_config/0`)."},
    {:crash_barrier, [:crash_barrier], [], quote(do: map() | keyword()),
     "Crash-barrier settings for every pool (see `Snakepit.CrashBarrier`)."},
    {:session_store, [:session_store], [], quote(do: map() | keyword()),
     "Quotas of `Snakepit.Bridge.SessionStore` (see its documentation)."},
    {:session_config, [:session_config], nil, quote(do: map() | keyword() | nil),
     "Upstream's session settings: `ttl` and `cleanup_interval` set `session_default_ttl` " <>
       "and `session_cleanup_interval`."},
    {:zero_copy, [:zero_copy], [], quote(do: keyword()),
     "Zero-copy sharing of large values (see `Snakepit.ZeroCopy.Settings`)."},
    {:python, [:python], [], quote(do: map() | keyword()),
     "How the workers' Python is found or installed (see `Snakepit.PythonRuntime`)."},
    {:python_executable, [:python_executable], nil, quote(do: String.t() | nil),
     "The workers' interpreter; when not set, `SNAKEPIT_PYTHON`, the uv runtime, then a " <>
       "`.venv` (see `Snakepit.PythonRuntime`)."},
    {:python_path, [:python_path], [], quote(do: [String.t()]),
     "Directories added to the workers' `PYTHONPATH`, after every application's `priv/python`."},
    {:python_adapter, [:python_adapter], nil, quote(do: term()),
     "Upstream's adapter setting: a Python class (`\"module.Class\"`) the default pool's " <>
       "workers load; anything else is ignored with a warning (`Snakepit.Config.Compat`)."},
    {:python_thread_limits, [:python_thread_limits], nil, quote(do: map() | keyword() | nil),
     "Thread counts of the numeric libraries in each worker (see " <>
       "`Snakepit.PythonThreadLimits`)."},
    {:python_packages, [:python_packages], [], quote(do: keyword()),
     "Python packages to install and check (see `Snakepit.PythonPackages`)."},
    {:python_test, [:python_test], [], quote(do: keyword()),
     "Options of `mix snakepit.python_test` (`path:`)."},
    {:opentelemetry, [:opentelemetry], [], quote(do: term()),
     "OpenTelemetry export (see `Snakepit.Telemetry.OpenTelemetry`, which checks it: a bad " <>
       "value turns export off with a warning instead of stopping the start)."},
    {:telemetry_metrics, [:telemetry_metrics], [], quote(do: keyword()),
     "Reporters of `Snakepit.TelemetryMetrics` (`console:`, `prometheus:`)."},
    {:cluster, [:cluster], false, quote(do: boolean() | keyword()),
     "Pools across nodes (see `Snakepit.Cluster`): `true` or a keyword list."},
    {:grpc_listener, [:grpc_listener], nil, quote(do: map() | keyword() | nil),
     "Where the tool bridge listens (see `Snakepit.Config.Listener`)."},
    {:grpc_host, [:grpc_host], nil, quote(do: String.t() | nil),
     "The legacy host of the bridge, with `grpc_port`."},
    {:log_level, [:log_level], :error,
     quote(do: :debug | :info | :warning | :warn | :error | :none),
     "Snakepit's own log level (see `Snakepit.Logger`)."},
    {:log_categories, [:log_categories], nil, quote(do: :all | [atom()] | nil),
     "The categories Snakepit logs (`nil` or `:all`: every one)."},
    {:orphan_protection, [:orphan_protection], true, quote(do: boolean()),
     "Workers end when the VM ends, even when it is killed (see `Snakepit.GRPCWorker`)."},
    {:runtime_dir, [:runtime_dir], nil, quote(do: String.t() | nil),
     "Parent of the private runtime directory (sockets); the system's temporary directory " <>
       "when not set."},
    {:native_prebuilt, [:native_prebuilt], nil, quote(do: String.t() | nil),
     "A prebuilt native library to install at compile time (see `mix snakepit.native.package`)."},
    {:timeout_profile, [:timeout_profile], :computed,
     quote(
       do: :balanced | :production | :production_strict | :development | :ml_inference | :batch
     ), "The timeout profile (see `Snakepit.Defaults.timeout_profile/0`)."},
    {:default_timeout, [:default_timeout], :computed, quote(do: timeout()),
     "Total budget (ms) of a regular call; the profile's when not set."},
    {:stream_timeout, [:stream_timeout], :computed, quote(do: timeout()),
     "Total budget (ms) of a streaming call; the profile's when not set."},
    {:queue_timeout, [:queue_timeout], :computed, quote(do: timeout()),
     "Queue budget (ms); the profile's when not set."},
    {:grpc_client_execute_timeout, [:grpc_client_execute_timeout], :computed,
     quote(do: timeout()), "See `Snakepit.Defaults.grpc_client_execute_timeout/0`."},
    {:grpc_worker_execute_timeout, [:grpc_worker_execute_timeout], :computed,
     quote(do: timeout()), "See `Snakepit.Defaults.grpc_worker_execute_timeout/0`."},
    {:grpc_worker_stream_timeout, [:grpc_worker_stream_timeout], :computed, quote(do: timeout()),
     "See `Snakepit.Defaults.grpc_worker_stream_timeout/0`."},
    {:pool_startup_batch_size, [:pool_startup_batch_size], :computed, quote(do: pos_integer()),
     "See `Snakepit.Defaults.pool_startup_batch_size/0`."},
    {:pool_startup_batch_delay_ms, [:pool_startup_batch_delay_ms], :computed,
     quote(do: non_neg_integer()), "See `Snakepit.Defaults.pool_startup_batch_delay_ms/0`."},
    {:instance_name, [:instance_name], :computed, quote(do: String.t() | atom() | nil),
     "This instance's name (see `Snakepit.Config.instance_name/0`)."},
    {:data_dir, [:data_dir], :computed, quote(do: String.t() | nil),
     "Where runtime state is kept (see `Snakepit.Config.data_dir/0`)."}
  ]

  @entries @plain ++
             for(
               {name, source, _how, doc} <- @derived,
               do:
                 {name, [name | Map.get(@derived_aliases, name, [])], {:profile, source},
                  quote(do: timeout()), doc}
             ) ++ @upstream ++ @structured

  @moduledoc @intro <>
               """

               ## Every setting

               Each with its type and default; aliases (upstream spellings that set
               the same thing) in parentheses. The getters in `Snakepit.Defaults` say
               more.

               """ <>
               Enum.map_join(
                 @entries,
                 "\n",
                 fn {_name, [key | aliases], default, type, doc} ->
                   also =
                     if aliases == [],
                       do: "",
                       else: " (#{Enum.map_join(aliases, ", ", &inspect/1)})"

                   default =
                     case default do
                       :computed -> "see its getter"
                       {:profile, key} -> "the timeout profile's `#{key}`"
                       value -> "`#{inspect(value)}`"
                     end

                   doc = if doc == :inert, do: "accepted for compatibility, no effect", else: doc

                   "  * `#{key}`#{also}: `#{Macro.to_string(type)}`, default #{default}. " <>
                     String.replace(doc, "\n", " ")
                 end
               )

  @doc false
  def plain, do: @plain
  @doc false
  def derived, do: @derived
  @doc false
  def derived_aliases, do: @derived_aliases
  @doc false
  def upstream, do: @upstream
  @doc false
  def structured, do: @structured
  @doc false
  def inert_doc, do: @inert_doc

  @doc """
  Every entry as `{name, config keys, default, type, doc}`; the default is
  `:computed` where the getter is written by hand, and `{:profile, key}`
  where it derives from the timeout profile.
  """
  @spec entries() :: [{atom(), list(), term(), Macro.t(), String.t() | :inert}]
  def entries, do: @entries

  # Each top-level key a table names, with the type its value must have.
  @types for {_name, keys, _default, type, _doc} <- @entries,
             key <- keys,
             is_atom(key),
             into: %{},
             do: {key, type}

  @doc "The type a top-level key's value must have, or `:error` when no table types it."
  @spec type(atom()) :: {:ok, Macro.t()} | :error
  def type(key), do: Map.fetch(@types, key)

  @doc """
  `{:ok, value}` when `config :snakepit, key:` is set, else `:error`: for
  the few readers that treat "not set" apart from every value.
  """
  @spec fetch(atom()) :: {:ok, term()} | :error
  def fetch(key) when is_map_key(@types, key), do: Application.fetch_env(:snakepit, key)

  @doc """
  Checks `env` (the `:snakepit` application environment, as a keyword
  list): `{:ok, unknown}` with the keys no table knows, or `{:error,
  message}` for the first value of the wrong type.

      iex> Snakepit.Config.Settings.check(cancel_grace_ms: 500, pool_size: 4)
      {:ok, []}
      iex> Snakepit.Config.Settings.check(cancel_grace_ms: :soon)
      {:error, "config :snakepit, cancel_grace_ms: must be non_neg_integer(), got: :soon"}
      iex> Snakepit.Config.Settings.check(cancel_grace: 500)
      {:ok, [cancel_grace: 500]}
  """
  @spec check(keyword()) :: {:ok, keyword()} | {:error, String.t()}
  def check(env) when is_list(env) do
    Enum.reduce_while(env, {:ok, []}, fn {key, value}, {:ok, unknown} ->
      case Map.fetch(@types, key) do
        {:ok, type} ->
          if conforms?(value, type),
            do: {:cont, {:ok, unknown}},
            else: {:halt, {:error, wrong_type(key, value, type)}}

        :error ->
          if known_elsewhere?(key),
            do: {:cont, {:ok, unknown}},
            else: {:cont, {:ok, unknown ++ [{key, value}]}}
      end
    end)
  end

  defp wrong_type(key, value, type),
    do: "config :snakepit, #{key}: must be #{Macro.to_string(type)}, got: #{inspect(value)}"

  # Pool keys given at the top level (checked with their pool), upstream
  # settings that do nothing here (Compat warns about those), and what
  # Mix itself keeps in an application's environment.
  defp known_elsewhere?(key) do
    key in Snakepit.Config.Schema.legacy_keys() or
      List.keymember?(Snakepit.Config.Compat.replaced(), key, 0) or key == :included_applications
  end

  @doc """
  Run at application start: `:ok`, or `{:error, message}` for a value of
  the wrong type. Warns once per VM about each key no table knows,
  naming the nearest known one.
  """
  @spec check_at_start() :: :ok | {:error, String.t()}
  def check_at_start do
    with {:ok, unknown} <- check(Application.get_all_env(:snakepit)) do
      for {key, _value} <- unknown, not :persistent_term.get({__MODULE__, :warned, key}, false) do
        :persistent_term.put({__MODULE__, :warned, key}, true)
        # Always shown, whatever Snakepit's own log level: a configuration mistake.
        Logger.warning(
          "Snakepit: config :snakepit, #{key}: is not a Snakepit setting and is ignored" <>
            nearest(key) <> " (see Snakepit.Config.Settings)"
        )
      end

      :ok
    end
  end

  defp nearest(key) do
    name = Atom.to_string(key)

    known =
      Map.keys(@types) ++
        Snakepit.Config.Schema.legacy_keys() ++
        Enum.map(Snakepit.Config.Compat.replaced(), &elem(&1, 0))

    {best, score} =
      known
      |> Enum.map(&{&1, String.jaro_distance(name, Atom.to_string(&1))})
      |> Enum.max_by(&elem(&1, 1))

    if score >= 0.8, do: "; did you mean #{best}?", else: ""
  end

  @doc """
  Whether `value` has `type`, a typespec as the table writes it (unions,
  ranges, lists, literal atoms and the basic types the table uses).

      iex> Snakepit.Config.Settings.conforms?(:infinity, quote(do: timeout()))
      true
      iex> Snakepit.Config.Settings.conforms?(0, quote(do: 1..2000))
      false
  """
  @spec conforms?(term(), Macro.t()) :: boolean()
  def conforms?(value, {:|, _, [left, right]}),
    do: conforms?(value, left) or conforms?(value, right)

  def conforms?(value, {:.., _, [low, high]}),
    do: is_integer(value) and value >= low and value <= high

  def conforms?(value, [type]), do: is_list(value) and Enum.all?(value, &conforms?(&1, type))
  def conforms?(value, atom) when is_atom(atom), do: value === atom

  def conforms?(value, {{:., _, [{:__aliases__, _, [:String]}, :t]}, _, []}),
    do: is_binary(value)

  def conforms?(value, {name, _, args}) when is_atom(name) and args in [[], nil],
    do: basic?(name, value)

  defp basic?(:pos_integer, v), do: is_integer(v) and v > 0
  defp basic?(:non_neg_integer, v), do: is_integer(v) and v >= 0
  defp basic?(:timeout, v), do: v == :infinity or (is_integer(v) and v >= 0)
  defp basic?(:boolean, v), do: is_boolean(v)
  # A float setting takes an integer too (`retry_backoff_multiplier: 2`).
  defp basic?(:float, v), do: is_number(v)
  defp basic?(:atom, v), do: is_atom(v)
  defp basic?(:keyword, v), do: is_list(v) and Keyword.keyword?(v)
  defp basic?(:map, v), do: is_map(v)
  defp basic?(:term, _v), do: true
end
