defmodule Snakepit.Config.Compat do
  @moduledoc """
  Upstream settings that have no counterpart here.

  Upstream Snakepit documents settings for machinery this implementation
  does not have (an Elixir gRPC server with acceptors and a port range, a
  cancelled-request table in the pool, periodic registry sweeps). Setting
  one of them is not an error: Snakepit starts, and logs one warning per
  setting, once per VM, naming what does that job here.

  Upstream settings that do map onto a current one are aliases in
  `Snakepit.Defaults` (e.g. `worker_shutdown_grace_period` sets
  `graceful_shutdown_timeout_ms`) and need no warning. Both lists are in
  `docs/compatibility.md`, which a test checks against this module.
  """

  require Logger

  @listener "the bridge binds in the native core, which returns the bound address at once, " <>
              "so there is no port to wait for; a restarted bridge tries its previous address, " <>
              "then a fresh one (grpc_listener says where it listens)"
  @server "the bridge server (tonic, in the native core) serves each connection on its own " <>
            "tasks, one connection per worker, with no acceptor pool or connection cap; " <>
            "message sizes are bounded by max_message_bytes"
  @cancelled "a caller that gives up is dropped from its pool's queue at once (the pool " <>
               "monitors it), so no cancelled entries are kept"
  @restarts "each worker slot is restarted by its own starter, with backoff " <>
              "(worker_restart_backoff_base_ms, worker_restart_backoff_max_ms, " <>
              "worker_restart_stable_ms), for as long as its pool lives"
  @registry "a worker's record is dropped when its process exit is confirmed, and earlier " <>
              "runs' records are swept at boot; Snakepit.Pool.ProcessRegistry." <>
              "cleanup_dead_workers/0 does it on demand"

  # {key, what does its job here}
  @replaced [
    {:affinity_cache_ttl_seconds,
     "session affinity lives in the pool's own state for as long as the session " <>
       "(session_default_ttl); there is no cache to expire"},
    {:cleanup_max_retries,
     "the shutdown cleanup waits a bounded time instead of counting retries: set " <>
       "cleanup_on_stop_timeout_ms (checked every cleanup_poll_interval_ms)"},
    {:grpc_config,
     "workers listen on Unix sockets in a private runtime directory (or OS-assigned " <>
       "loopback ports under worker_transport: :tcp), so there is no port range; call " <>
       "timeouts come from timeout_profile and pool_request_timeout"},
    {:grpc_listener_port_check_interval_ms, @listener},
    {:grpc_listener_ready_timeout_ms, @listener},
    {:grpc_listener_reuse_attempts, @listener},
    {:grpc_listener_reuse_retry_delay_ms, @listener},
    {:grpc_listener_reuse_wait_timeout_ms, @listener},
    {:grpc_max_connections, @server},
    {:grpc_num_acceptors, @server},
    {:grpc_socket_backlog, @server},
    {:grpc_port_pool_size,
     "grpc_listener mode :external_pool is not supported: one bridge serves every worker " <>
       "(use mode: :external with one port)"},
    {:pool_cancelled_retention_multiplier, @cancelled},
    {:pool_max_cancelled_entries, @cancelled},
    {:pool_reconcile_batch_size, @restarts <> "; there is no periodic reconcile"},
    {:pool_reconcile_interval_ms, @restarts <> "; there is no periodic reconcile"},
    {:process_registry_cleanup_interval, @registry},
    {:process_registry_unregister_cleanup_attempts, @registry},
    {:process_registry_unregister_cleanup_delay, @registry},
    {:worker_ready_timeout,
     "a worker tells its pool it is ready with a message, not a call, so nothing waits " <>
       "on it; how long a worker may take to start is grpc_server_ready_timeout (or " <>
       "pool_startup_timeout)"},
    {:worker_starter_max_restarts, @restarts},
    {:worker_starter_max_seconds, @restarts}
  ]

  @doc """
  The upstream settings that have no effect here, each with what does its
  job instead.
  """
  @spec replaced() :: [{atom(), String.t()}]
  def replaced, do: @replaced

  @doc """
  The warnings `env` (the `:snakepit` application environment, as a
  keyword list) calls for: `[{key, message}]`, one per replaced setting it
  sets, and one for a `python_adapter` that is not a module name.
  """
  @spec warnings(keyword()) :: [{atom(), String.t()}]
  def warnings(env) when is_list(env) do
    replaced =
      for {key, why} <- replaced(), Keyword.has_key?(env, key) do
        {key,
         "Snakepit: config :snakepit, #{key}: has no effect here and is ignored; #{why} " <>
           "(see docs/compatibility.md)"}
      end

    replaced ++ python_adapter(Keyword.get(env, :python_adapter))
  end

  defp python_adapter(nil), do: []
  defp python_adapter(spec) when is_binary(spec) and spec != "", do: []

  defp python_adapter(other) do
    [
      {:python_adapter,
       "Snakepit: config :snakepit, python_adapter: #{inspect(other)} is ignored: it must " <>
         "name a Python adapter class as a string, e.g. \"my_module:MyAdapter\""}
    ]
  end

  @doc """
  Logs the warnings of the current configuration, each at most once per
  VM (an application restart does not repeat them). Called at application
  start. Returns the keys it warned about now.
  """
  @spec warn_at_start() :: [atom()]
  def warn_at_start do
    for {key, message} <- warnings(Application.get_all_env(:snakepit)),
        not :persistent_term.get({__MODULE__, :warned, key}, false) do
      :persistent_term.put({__MODULE__, :warned, key}, true)
      # Always shown, whatever Snakepit's own log level: a configuration mistake.
      Logger.warning(message)
      key
    end
  end
end
