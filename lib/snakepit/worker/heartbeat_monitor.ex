defmodule Snakepit.HeartbeatMonitor do
  @moduledoc """
  Watches one worker with heartbeats.

  Every `ping_interval_ms` the monitor calls `ping_fun.(timestamp)`. A ping
  is answered when `notify_pong/2` is called, or, when `ping_fun` returned
  `{:ok, ref}` for a reference, when `{ref, {:ok, _}}` arrives (what the
  native core's `Snakepit.Native.grpc_heartbeat/5` sends). A ping not
  answered within `timeout_ms` (or answered with an error) is missed; an
  answer resets the count.

  After `max_missed_heartbeats` misses in a row the worker is unhealthy:

    * `dependent: true` (default) - the worker is taken down with exit
      reason `:heartbeat_timeout`, so its supervisor restarts it, and the
      monitor stops;
    * `dependent: false` - only reported (telemetry and a warning); the
      worker keeps running and the count starts over.

  The Python side mirrors this: a dependent worker exits by itself when
  Elixir's heartbeats stop (see `snakepit_bridge.heartbeat`).

  Events: `[:snakepit, :heartbeat, :missed]` (`%{missed: n}`) and
  `[:snakepit, :heartbeat, :timeout]`, with `worker_id` and `dependent`.

  Options: `:worker_pid`, `:worker_id`, `:ping_interval_ms`, `:timeout_ms`,
  `:max_missed_heartbeats`, `:initial_delay_ms`, `:ping_fun`, `:dependent`.
  """
  use GenServer

  alias Snakepit.{Defaults, Telemetry}

  @type start_option ::
          {:worker_pid, pid()}
          | {:worker_id, String.t()}
          | {:ping_interval_ms, non_neg_integer()}
          | {:timeout_ms, non_neg_integer()}
          | {:max_missed_heartbeats, non_neg_integer()}
          | {:initial_delay_ms, non_neg_integer()}
          | {:ping_fun, (integer() -> :ok | {:ok, term()} | {:error, term()} | term())}
          | {:dependent, boolean()}

  @doc "Starts a monitor linked to the caller."
  @spec start_link([start_option()]) :: GenServer.on_start()
  def start_link(opts), do: GenServer.start_link(__MODULE__, opts)

  @doc """
  Starts the monitor of the calling worker `worker_id`, linked to it, when
  its pool's `heartbeat` settings (`config`) enable heartbeats: `{:ok,
  monitor}`, or `:disabled`. It pings the worker's Python server over
  `channel` through the native core; in dependent mode too many misses exit
  the worker with `:heartbeat_timeout`.
  """
  @spec start_for_worker(String.t(), reference(), map()) :: GenServer.on_start() | :disabled
  def start_for_worker(worker_id, channel, config) do
    # Off unless the config turns it on; each other key from the one
    # heartbeat table (Snakepit.Config.Schema) when the config lacks it.
    if Map.get(config, :enabled, false) do
      config = Map.merge(Snakepit.Config.Schema.heartbeat_defaults(), config)

      # Runs in the monitor, which gets the reply.
      ping = fn _ts ->
        ref = make_ref()
        :ok = Snakepit.Native.grpc_heartbeat(channel, self(), ref, worker_id, config.timeout_ms)
        {:ok, ref}
      end

      start_link(
        worker_pid: self(),
        worker_id: worker_id,
        ping_interval_ms: config.ping_interval_ms,
        timeout_ms: config.timeout_ms,
        max_missed_heartbeats: config.max_missed_heartbeats,
        initial_delay_ms: config.initial_delay_ms,
        dependent: config.dependent,
        ping_fun: ping
      )
    else
      :disabled
    end
  end

  @doc "Reports the answer to the ping sent at `timestamp` (any pending ping when unknown)."
  @spec notify_pong(pid(), integer()) :: :ok
  def notify_pong(monitor_pid, timestamp), do: GenServer.cast(monitor_pid, {:pong, timestamp})

  @doc "Pings sent and answered, misses in a row, time of the last answer."
  @spec get_status(pid()) :: map()
  def get_status(monitor_pid), do: GenServer.call(monitor_pid, :status)

  @impl true
  def init(opts) do
    worker = Keyword.fetch!(opts, :worker_pid)
    ping_fun = Keyword.fetch!(opts, :ping_fun)

    state = %{
      worker_pid: worker,
      worker_id: Keyword.get(opts, :worker_id, inspect(worker)),
      interval: Keyword.get(opts, :ping_interval_ms, Defaults.heartbeat_ping_interval_ms()),
      timeout: Keyword.get(opts, :timeout_ms, Defaults.heartbeat_timeout_ms()),
      max_missed:
        max(Keyword.get(opts, :max_missed_heartbeats, Defaults.heartbeat_max_missed()), 1),
      dependent: Keyword.get(opts, :dependent, true),
      ping_fun: ping_fun,
      # ping id (timestamp or reference) => timestamp
      pending: %{},
      missed: 0,
      sent: 0,
      answered: 0,
      last_pong: nil
    }

    Process.send_after(self(), :ping, Keyword.get(opts, :initial_delay_ms, 0))
    {:ok, state}
  end

  @impl true
  def handle_info(:ping, state) do
    ts = System.monotonic_time(:millisecond)
    Process.send_after(self(), :ping, state.interval)

    result =
      try do
        state.ping_fun.(ts)
      rescue
        e -> {:error, e}
      catch
        kind, reason -> {:error, {kind, reason}}
      end

    state = %{state | sent: state.sent + 1}

    case result do
      {:error, _} ->
        {:noreply, miss(state)}

      {:ok, ref} when is_reference(ref) ->
        Process.send_after(self(), {:ping_timeout, ref}, state.timeout)
        {:noreply, %{state | pending: Map.put(state.pending, ref, ts)}}

      _ ->
        Process.send_after(self(), {:ping_timeout, ts}, state.timeout)
        {:noreply, %{state | pending: Map.put(state.pending, ts, ts)}}
    end
  end

  def handle_info({:ping_timeout, id}, state) do
    case Map.pop(state.pending, id) do
      {nil, _} -> {:noreply, state}
      {_ts, pending} -> {:noreply, miss(%{state | pending: pending})}
    end
  end

  # Replies of the native core to pings sent with a reference.
  def handle_info({ref, reply}, state) when is_reference(ref) do
    case Map.pop(state.pending, ref) do
      {nil, _} ->
        {:noreply, state}

      {_ts, pending} ->
        state = %{state | pending: pending}

        case reply do
          {:ok, _} -> {:noreply, pong(state)}
          _error -> {:noreply, miss(state)}
        end
    end
  end

  def handle_info(:stop, state), do: {:stop, :normal, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def handle_cast({:pong, ts}, state) do
    pending =
      if Map.has_key?(state.pending, ts),
        do: Map.delete(state.pending, ts),
        else: drop_oldest(state.pending)

    {:noreply, pong(%{state | pending: pending})}
  end

  @impl true
  def handle_call(:status, _from, state) do
    {:reply,
     %{
       worker_id: state.worker_id,
       sent: state.sent,
       answered: state.answered,
       missed: state.missed,
       last_pong: state.last_pong,
       dependent: state.dependent
     }, state}
  end

  defp drop_oldest(pending) when map_size(pending) == 0, do: pending

  defp drop_oldest(pending) do
    {id, _} = Enum.min_by(pending, fn {_id, ts} -> ts end)
    Map.delete(pending, id)
  end

  defp pong(state) do
    %{
      state
      | missed: 0,
        answered: state.answered + 1,
        last_pong: System.monotonic_time(:millisecond)
    }
  end

  defp miss(state) do
    missed = state.missed + 1
    meta = %{worker_id: state.worker_id, dependent: state.dependent}
    Telemetry.emit([:snakepit, :heartbeat, :missed], %{missed: missed}, meta)

    if missed >= state.max_missed do
      Telemetry.emit([:snakepit, :heartbeat, :timeout], %{missed: missed}, meta)

      if state.dependent do
        Snakepit.Logger.error(
          :worker,
          "worker #{state.worker_id} missed #{missed} heartbeats; taking it down"
        )

        Process.exit(state.worker_pid, :heartbeat_timeout)
        send(self(), :stop)
        %{state | missed: missed, pending: %{}}
      else
        Snakepit.Logger.warning(
          :worker,
          "worker #{state.worker_id} missed #{missed} heartbeats (independent mode: kept)"
        )

        %{state | missed: 0}
      end
    else
      %{state | missed: missed}
    end
  end
end
