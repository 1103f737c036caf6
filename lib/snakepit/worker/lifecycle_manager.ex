defmodule Snakepit.Worker.LifecycleManager do
  @moduledoc """
  Recycles workers before long-lived Python processes degrade (memory
  fragmentation, growing caches, leaks in C libraries).

  A worker is recycled when, per its pool's config:

    * `worker_ttl` - it has been up for longer than `{n, :seconds | :minutes | :hours}`
    * `worker_max_requests` - it has served that many requests (checked by the
      pool as each request ends)
    * `memory_threshold_mb` - its Python process's resident memory (`VmRSS`
      in `/proc/<pid>/status`) exceeds the threshold
    * `recycle_worker/2` is called

  Recycling goes through `Snakepit.Pool.recycle_worker/4`: the replacement
  starts first, the old worker takes no new requests once the replacement
  is ready, and it stops when its in-flight requests are done, so the pool
  never drops to zero capacity. Each recycle emits
  `[:snakepit, :worker, :recycled]` with `worker_id`, `pool`, `reason`,
  `uptime` and `request_count`.

  TTL and memory are checked every `lifecycle_check_interval` ms; worker
  health (is the Python process alive?) every
  `lifecycle_health_check_interval` ms, emitting
  `[:snakepit, :worker, :health_check_failed]` when not.

  Request counts live in a public ETS table, so counting costs the pool no
  message.
  """
  use GenServer

  alias Snakepit.{Defaults, Telemetry}
  alias Snakepit.Worker.LifecycleConfig

  @table :snakepit_worker_lifecycle

  @doc "Starts the lifecycle manager. Options: `:check_interval`, `:health_check_interval` (ms)."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc """
  Tracks a worker (called by the pool when a worker is ready; a restarted
  worker starts over). `config` is a `Snakepit.Worker.LifecycleConfig` or a
  pool config to build one from.
  """
  @spec track_worker(atom(), String.t(), pid(), map()) :: :ok
  def track_worker(pool_name, worker_id, worker_pid, config) do
    insert({worker_id, 0})
    config = LifecycleConfig.ensure(pool_name, config)
    GenServer.cast(__MODULE__, {:track, pool_name, worker_id, worker_pid, config, now()})
  end

  @doc "Stops tracking a worker (when it stops); `pid`, when given, must be the tracked one."
  @spec untrack_worker(String.t(), pid() | nil) :: :ok
  def untrack_worker(worker_id, pid \\ nil),
    do: GenServer.cast(__MODULE__, {:untrack, worker_id, pid})

  @doc "Counts one more request served by `worker_id`; returns the new count."
  @spec increment_request_count(String.t()) :: non_neg_integer()
  def increment_request_count(worker_id) do
    :ets.update_counter(@table, worker_id, {2, 1}, {worker_id, 0})
  rescue
    ArgumentError -> 0
  end

  @doc "Requests served by `worker_id` since it (last) started."
  @spec request_count(String.t()) :: non_neg_integer()
  def request_count(worker_id) do
    case :ets.lookup(@table, worker_id) do
      [{_, n}] -> n
      [] -> 0
    end
  rescue
    ArgumentError -> 0
  end

  @doc """
  Recycles `worker_id` of `pool_name` now: `:ok`, or `{:error, :not_found}`
  / `{:error, :already_recycling}`.
  """
  @spec recycle_worker(atom(), String.t()) :: :ok | {:error, term()}
  def recycle_worker(pool_name, worker_id) do
    case Snakepit.Pool.recycle_worker(Snakepit.Pool, pool_name, worker_id, :manual) do
      :ok ->
        GenServer.cast(__MODULE__, {:recycled, pool_name, :manual})
        :ok

      error ->
        error
    end
  catch
    :exit, _ -> {:error, :pool_not_running}
  end

  @doc "Tracked workers with their uptime, request count and memory, and recycle counts."
  @spec get_stats() :: map()
  def get_stats, do: GenServer.call(__MODULE__, :stats)

  @doc "Memory-threshold recycles per pool since the manager started."
  @spec memory_recycle_counts() :: %{optional(atom()) => non_neg_integer()}
  def memory_recycle_counts, do: GenServer.call(__MODULE__, :memory_recycles)

  @doc """
  Resident memory (MB) of OS process `os_pid`, from `/proc/<pid>/status`,
  or nil when it cannot be read.
  """
  @spec rss_mb(integer() | nil) :: float() | nil
  def rss_mb(nil), do: nil

  def rss_mb(os_pid) do
    with {:ok, status} <- File.read("/proc/#{os_pid}/status"),
         [_, kb] <- Regex.run(~r/^VmRSS:\s+(\d+)\s+kB/m, status) do
      String.to_integer(kb) / 1024
    else
      _ -> nil
    end
  end

  @doc """
  Why a tracked worker should be recycled now, or nil. Pure.

      iex> worker = %{started_at: 0, config: %{worker_ttl: {2, :seconds}}}
      iex> {Snakepit.Worker.LifecycleManager.recycle_reason(worker, 1_999, nil),
      ...>  Snakepit.Worker.LifecycleManager.recycle_reason(worker, 2_000, nil)}
      {nil, :ttl}
  """
  @spec recycle_reason(map(), integer(), number() | nil) :: :ttl | :memory_threshold | nil
  def recycle_reason(worker, now_ms, rss_mb) do
    config = LifecycleConfig.ensure(nil, worker.config)
    ttl = ttl_ms(config.raw_worker_ttl)
    threshold = config.memory_threshold_mb

    cond do
      ttl != :infinity and now_ms - worker.started_at >= ttl -> :ttl
      threshold != nil and rss_mb != nil and rss_mb >= threshold -> :memory_threshold
      true -> nil
    end
  end

  @doc """
  A `worker_ttl` in milliseconds.

      iex> Snakepit.Worker.LifecycleManager.ttl_ms({2, :minutes})
      120_000
  """
  @spec ttl_ms(term()) :: non_neg_integer() | :infinity
  def ttl_ms({n, :seconds}), do: n * 1_000
  def ttl_ms({n, :minutes}), do: n * 60_000
  def ttl_ms({n, :hours}), do: n * 3_600_000
  def ttl_ms(_), do: :infinity

  defp insert(row) do
    :ets.insert(Snakepit.ETSOwner.ensure_table(@table), row)
  rescue
    _ -> false
  end

  defp now, do: System.monotonic_time(:millisecond)

  # -- server -------------------------------------------------------------------

  # Lifecycle configs carry adapter_env (secrets): never in a crash report.
  @impl true
  def format_status(status), do: Snakepit.Redact.status(status)

  @impl true
  def init(opts) do
    Snakepit.ETSOwner.ensure_table(@table)

    state = %{
      workers: %{},
      check_interval: Keyword.get(opts, :check_interval, Defaults.lifecycle_check_interval()),
      health_interval:
        Keyword.get(opts, :health_check_interval, Defaults.lifecycle_health_check_interval()),
      recycles: %{},
      memory_recycles: %{}
    }

    Process.send_after(self(), :check, state.check_interval)
    Process.send_after(self(), :health_check, state.health_interval)
    {:ok, state, {:continue, :adopt}}
  end

  # After a restart of this process, pick up the workers already running.
  @impl true
  def handle_continue(:adopt, state) do
    workers =
      try do
        for w <- Snakepit.Pool.worker_details(), into: %{} do
          {w.id,
           %{
             pool: w.pool,
             pid: w.pid,
             os_pid: w.os_pid,
             started_at: now(),
             config: LifecycleConfig.ensure(w.pool, w.config)
           }}
        end
      catch
        :exit, _ -> %{}
      end

    {:noreply, %{state | workers: Map.merge(workers, state.workers)}}
  end

  @impl true
  def handle_cast({:track, pool, id, pid, %{memory_threshold_mb: _} = config, started_at}, state)
      when is_binary(id) and is_pid(pid) and is_integer(started_at) do
    os_pid =
      case Snakepit.Pool.Registry.get_worker_metadata(id) do
        {:ok, %{os_pid: os_pid}} -> os_pid
        _ -> nil
      end

    worker = %{pool: pool, pid: pid, os_pid: os_pid, started_at: started_at, config: config}
    {:noreply, %{state | workers: Map.put(state.workers, id, worker)}}
  end

  def handle_cast({:untrack, id, pid}, state) do
    case state.workers do
      %{^id => %{pid: tracked}} when pid == nil or pid == tracked ->
        :ets.delete(@table, id)
        {:noreply, %{state | workers: Map.delete(state.workers, id)}}

      _ ->
        {:noreply, state}
    end
  end

  def handle_cast({:recycled, pool, reason}, state), do: {:noreply, count(state, pool, reason)}

  def handle_cast(message, state) do
    malformed(message)
    {:noreply, state}
  end

  defp malformed(message),
    do: Snakepit.Logger.malformed(:lifecycle, "Snakepit.Worker.LifecycleManager", message)

  @impl true
  def handle_call(:stats, _from, state) do
    now = now()

    workers =
      for {id, w} <- state.workers do
        %{
          worker_id: id,
          pool: w.pool,
          uptime_ms: now - w.started_at,
          request_count: request_count(id),
          memory_mb: rss_mb(w.os_pid)
        }
      end

    {:reply,
     %{
       total_workers: map_size(state.workers),
       workers: Enum.sort_by(workers, & &1.worker_id),
       recycles: state.recycles,
       memory_recycles: state.memory_recycles
     }, state}
  end

  def handle_call(:memory_recycles, _from, state), do: {:reply, state.memory_recycles, state}

  def handle_call(request, _from, state) do
    malformed(request)
    {:reply, {:error, :unknown_request}, state}
  end

  @impl true
  def handle_info(:check, state) do
    now = now()

    state =
      Enum.reduce(state.workers, state, fn {id, w}, acc ->
        rss = if w.config.memory_threshold_mb, do: rss_mb(w.os_pid)

        case recycle_reason(w, now, rss) do
          nil -> acc
          reason -> recycle(acc, w.pool, id, reason, rss)
        end
      end)

    Process.send_after(self(), :check, state.check_interval)
    {:noreply, state}
  end

  def handle_info(:health_check, state) do
    for {id, w} <- state.workers,
        w.os_pid != nil and not Snakepit.Native.process_alive(w.os_pid) do
      Telemetry.emit([:snakepit, :worker, :health_check_failed], %{}, %{
        worker_id: id,
        pool: w.pool,
        error: :process_not_alive
      })
    end

    Process.send_after(self(), :health_check, state.health_interval)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp recycle(state, pool, id, reason, rss) do
    result =
      try do
        Snakepit.Pool.recycle_worker(Snakepit.Pool, pool, id, reason)
      catch
        :exit, _ -> {:error, :pool_not_running}
      end

    case result do
      :ok ->
        Snakepit.Logger.info(
          :lifecycle,
          "recycling #{id} of pool #{inspect(pool)}: #{reason}" <>
            if(rss, do: " (#{Float.round(rss, 1)} MB)", else: "")
        )

        count(state, pool, reason)

      _ ->
        state
    end
  end

  defp count(state, pool, reason) do
    state = %{state | recycles: Map.update(state.recycles, reason, 1, &(&1 + 1))}

    if reason == :memory_threshold,
      do: %{state | memory_recycles: Map.update(state.memory_recycles, pool, 1, &(&1 + 1))},
      else: state
  end
end
