defmodule Snakepit.HealthMonitor do
  @moduledoc """
  Monitors worker health and crash patterns.

  Tracks crashes in a rolling window and decides whether the pool is
  healthy: it is unhealthy once `max_crashes` crashes happened within the
  last `crash_window_ms`. Use it to trip a circuit breaker, stop
  restarting workers, or alert.

      {:ok, hm} =
        Snakepit.HealthMonitor.start_link(
          name: :my_pool_health,
          pool: :default,
          max_crashes: 10,
          crash_window_ms: 60_000
        )

      Snakepit.HealthMonitor.record_crash(hm, "worker_1", %{reason: :segfault})

      if Snakepit.HealthMonitor.healthy?(hm) do
        # pool is healthy
      else
        # too many crashes, consider action
      end

  The bookkeeping is `Snakepit.HealthMonitor.State`; this process only
  holds it, reads the clock, and drops expired crashes every
  `check_interval_ms`.
  """

  use GenServer

  alias Snakepit.HealthMonitor.State

  @type worker_stats :: %{
          crash_count: non_neg_integer(),
          last_crash_time: integer() | nil,
          crash_reasons: [term()]
        }

  @type t :: %{
          pool: atom(),
          workers: %{required(String.t()) => worker_stats()},
          crash_window_ms: pos_integer(),
          max_crashes: pos_integer(),
          total_crashes: non_neg_integer(),
          check_interval_ms: pos_integer(),
          check_timer: reference() | nil
        }

  @options [:name, :pool, :check_interval_ms, :crash_window_ms, :max_crashes, :clock]

  @doc """
  Starts a health monitor.

  ## Options

    * `:name` - GenServer name (optional)
    * `:pool` - pool name to monitor (required)
    * `:check_interval_ms` - how often expired crashes are dropped (default:
      `Snakepit.Defaults.health_monitor_check_interval/0`, 30000)
    * `:crash_window_ms` - rolling window for crash counting (default: 60000)
    * `:max_crashes` - crashes in the window that make the pool unhealthy (default: 10)
    * `:clock` - zero-arity function returning monotonic milliseconds; for tests

  Raises `ArgumentError` naming the option for missing, unknown or
  ill-typed options.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError, "Snakepit.HealthMonitor expects a keyword list, got: #{inspect(opts)}"
    end

    case Keyword.keys(opts) -- @options do
      [] ->
        :ok

      unknown ->
        raise ArgumentError, "unknown Snakepit.HealthMonitor options: #{inspect(unknown)}"
    end

    clock = Keyword.get(opts, :clock, fn -> System.monotonic_time(:millisecond) end)

    unless is_function(clock, 0) do
      raise ArgumentError, "invalid :clock option: expected a zero-arity function"
    end

    state = State.new(opts)
    gen_opts = if Keyword.has_key?(opts, :name), do: [name: opts[:name]], else: []
    GenServer.start_link(__MODULE__, {state, clock}, gen_opts)
  end

  @doc "Returns whether the pool is considered healthy."
  @spec healthy?(GenServer.server()) :: boolean()
  def healthy?(server), do: GenServer.call(server, :healthy?)

  @doc """
  Records a worker crash. `info[:reason]` is kept in the worker's recent
  crash reasons.
  """
  @spec record_crash(GenServer.server(), String.t(), map()) :: :ok
  def record_crash(server, worker_id, info \\ %{}) do
    unless is_binary(worker_id) and is_map(info) do
      raise ArgumentError,
            "record_crash/3 expects a string worker id and a map, got: #{inspect(worker_id)}, #{inspect(info)}"
    end

    GenServer.call(server, {:record_crash, worker_id, info})
  end

  @doc """
  Returns health statistics: `pool`, `healthy` (also as upstream's `is_healthy`), `total_crashes` (ever),
  `crashes_in_window`, `max_crashes`, `crash_window_ms`,
  `check_interval_ms`, `workers_with_crashes` and `workers` (per-worker
  `crash_count`, `last_crash_time`, `crash_reasons`).

  Crash times are monotonic milliseconds, comparable with
  `System.monotonic_time(:millisecond)` (not wall-clock time).
  """
  @spec stats(GenServer.server()) :: map()
  def stats(server), do: GenServer.call(server, :stats)

  @doc """
  Returns the health of one worker: its `crash_count` (ever),
  `recent_crashes` (in the window), `last_crash_time`, `crash_reasons` and
  `healthy`.
  """
  @spec worker_health(GenServer.server(), String.t()) :: map()
  def worker_health(server, worker_id), do: GenServer.call(server, {:worker_health, worker_id})

  @impl true
  def init({state, clock}) do
    {:ok, schedule(%{state: state, clock: clock})}
  end

  @impl true
  def handle_call(:healthy?, _from, data),
    do: {:reply, State.healthy?(data.state, now(data)), data}

  def handle_call(:stats, _from, data), do: {:reply, State.stats(data.state, now(data)), data}

  def handle_call({:worker_health, id}, _from, data),
    do: {:reply, State.worker_health(data.state, id, now(data)), data}

  def handle_call({:record_crash, id, info}, _from, data) do
    {:reply, :ok, %{data | state: State.record_crash(data.state, id, info, now(data))}}
  end

  @impl true
  def handle_info(:check, data) do
    {:noreply, schedule(%{data | state: State.prune(data.state, now(data))})}
  end

  def handle_info(_message, data), do: {:noreply, data}

  defp schedule(%{state: state} = data) do
    timer = Process.send_after(self(), :check, state.check_interval_ms)
    %{data | state: %{state | check_timer: timer}}
  end

  defp now(%{clock: clock}), do: clock.()
end
