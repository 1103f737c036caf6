defmodule Snakepit.Defaults do
  @moduledoc """
  Every configurable default in one place.

  Each function returns `Application.get_env(:snakepit, key)` when set and
  the built-in default otherwise. The three headline timeouts
  (`default_timeout/0`, `stream_timeout/0`, `queue_timeout/0`) come from the
  active `timeout_profile` unless the per-key setting is present, which
  always wins.
  """

  @profiles %{
    balanced: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production_strict: %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000},
    development: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    ml_inference: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    batch: %{default_timeout: 3_600_000, stream_timeout: :infinity, queue_timeout: 300_000}
  }

  @plain [
    default_command_timeout: 30_000,
    pool_request_timeout: 60_000,
    pool_streaming_timeout: 300_000,
    pool_startup_timeout: 10_000,
    pool_queue_timeout: 5_000,
    checkout_timeout: 5_000,
    grpc_worker_execute_timeout: 30_000,
    grpc_worker_stream_timeout: 300_000,
    grpc_command_timeout: 30_000,
    grpc_server_ready_timeout: 30_000,
    graceful_shutdown_timeout_ms: 6_000,
    pool_max_queue_size: 1000,
    pool_max_workers: 150,
    pool_startup_batch_size: 10,
    pool_startup_batch_delay_ms: 500,
    stream_window: 32,
    # The tool bridge: how long an Elixir tool called from Python may run
    # when the call carries no budget, and how long other bridge calls
    # (registration, sessions, heartbeats) may take.
    bridge_tool_timeout_ms: 30_000,
    bridge_call_timeout_ms: 10_000,
    # :unix (sockets in the private runtime dir) or :tcp (loopback), for
    # the workers' servers and the bridge server alike.
    worker_transport: :unix,
    worker_restart_backoff_ms: 1_000,
    worker_restart_max_backoff_ms: 30_000
  ]

  for {key, default} <- @plain do
    @doc "`config :snakepit, #{key}: ...`; default `#{inspect(default)}`."
    @spec unquote(key)() :: term()
    def unquote(key)(), do: Application.get_env(:snakepit, unquote(key), unquote(default))
  end

  @doc "The timeout profiles and their three timeouts."
  @spec timeout_profiles() :: %{required(atom()) => %{required(atom()) => timeout()}}
  def timeout_profiles, do: @profiles

  @doc "The active profile (`config :snakepit, timeout_profile: ...`), `:balanced` by default."
  @spec timeout_profile() :: atom()
  def timeout_profile do
    profile = Application.get_env(:snakepit, :timeout_profile, :balanced)
    if Map.has_key?(@profiles, profile), do: profile, else: :balanced
  end

  @doc "Total budget of a regular execute call."
  @spec default_timeout() :: timeout()
  def default_timeout, do: profiled(:default_timeout)

  @doc "Total budget of a streaming call."
  @spec stream_timeout() :: timeout()
  def stream_timeout, do: profiled(:stream_timeout)

  @doc "How long a request may wait in a pool's queue."
  @spec queue_timeout() :: timeout()
  def queue_timeout, do: profiled(:queue_timeout)

  defp profiled(key) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, value} -> value
      :error -> @profiles[timeout_profile()][key]
    end
  end

  @doc "Pool size when none is configured: two workers per online scheduler."
  @spec default_pool_size() :: pos_integer()
  def default_pool_size,
    do: Application.get_env(:snakepit, :pool_size, System.schedulers_online() * 2)

  @doc "The Python adapter class a worker loads when none is configured."
  @spec default_python_adapter() :: String.t()
  def default_python_adapter, do: "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
end
