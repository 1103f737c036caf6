defmodule Snakepit.Pool.Stats do
  @moduledoc """
  What a pool process reports about its pools, as pure functions of its
  state (`Snakepit.Pool.ServerState`): the statistics of
  `Snakepit.Pool.get_stats/1` (one pool's, or summed over every pool), the
  snapshots of `Snakepit.Status`, and the measurements of the periodic
  `[:snakepit, :pool, :status]` event.
  """

  alias Snakepit.Pool.{Deadline, Errors, Runtime, State, Timings}

  @doc """
  The statistics of pool `which` of the pool process (`:all`: summed over
  its pools), or `{:error, error}` for a pool it does not serve.
  """
  @spec of(Snakepit.Pool.ServerState.t(), atom()) :: map() | {:error, Snakepit.Error.t()}
  def of(state, :all) do
    pools = Enum.map(state.order, &state.pools[&1])

    state.order
    |> Enum.map(&with_size(state, &1))
    |> Enum.reduce(&Map.merge(&1, &2, fn k, a, b -> sum(k, a, b) end))
    |> Map.merge(timing(pools, Enum.map(state.order, &state.runtime[&1].timings)))
  end

  def of(state, name) do
    case Map.fetch(state.pools, name) do
      {:ok, pool} ->
        Map.merge(with_size(state, name), timing([pool], [state.runtime[name].timings]))

      :error ->
        {:error, Errors.unknown_pool(name)}
    end
  end

  @doc "Every pool with its statistics and workers, for `Snakepit.Status`."
  @spec status(Snakepit.Pool.ServerState.t()) :: [map()]
  def status(state) do
    now = Deadline.now()

    for name <- state.order do
      pool = state.pools[name]
      rt = state.runtime[name]

      workers =
        for {id, w} <- Enum.sort_by(pool.workers, &elem(&1, 0)) do
          %{
            id: id,
            os_pid: Map.get(w, :os_pid),
            load: w.load,
            capacity: w.capacity,
            status: w.status,
            uptime_ms: Runtime.uptime(rt, id, now)
          }
        end

      %{
        name: name,
        profile: pool.config.worker_profile,
        pool_size: rt.size,
        size: rt.size,
        min_workers: rt.min,
        max_workers: rt.max,
        stats: Map.merge(with_size(state, name), timing([pool], [rt.timings])),
        workers: workers
      }
    end
  end

  @doc "The counters and gauges of one pool (its `Snakepit.Pool.State`)."
  @spec pool(State.t()) :: map()
  def pool(state) do
    busy = Enum.count(state.workers, fn {_, w} -> w.load > 0 end)

    Map.merge(state.stats, %{
      queued: :queue.len(state.queue),
      workers: map_size(state.workers),
      available: map_size(state.workers) - busy,
      busy: busy,
      slots_down: map_size(state.down),
      queue_delay_ms: queue_delay(state),
      down: Map.new(state.down, fn {id, slot} -> {id, slot_summary(slot)} end)
    })
  end

  @doc """
  The measurements of `[:snakepit, :pool, :status]`: worker counts, queue
  depth and how long the oldest queued request has waited.
  """
  @spec status_measurements(State.t()) :: %{atom() => non_neg_integer()}
  def status_measurements(state) do
    busy = Enum.count(state.workers, fn {_, w} -> w.load > 0 end)
    total = map_size(state.workers)

    %{
      total_workers: total,
      available_workers: total - busy,
      busy_workers: busy,
      queue_depth: :queue.len(state.queue),
      queue_delay_ms: queue_delay(state)
    }
  end

  # How long the oldest queued request has waited (0 with none queued).
  defp queue_delay(state) do
    case :queue.peek(state.queue) do
      {:value, ref} -> max(state.clock.() - Map.get(state.waiting[ref], :now, state.clock.()), 0)
      :empty -> 0
    end
  end

  defp slot_summary(slot) do
    %{
      status: slot.status,
      reason: describe(slot.error),
      failures: slot.failures,
      retry_in_ms: slot.retry_in_ms
    }
  end

  defp describe(%{message: message}) when is_binary(message), do: message
  defp describe(other), do: inspect(other)

  # A pool's counters, with its size and range.
  defp with_size(state, name) do
    rt = state.runtime[name]
    Map.merge(pool(state.pools[name]), %{size: rt.size, min_workers: rt.min, max_workers: rt.max})
  end

  # Counters add up across pools; per-slot maps (`down`) merge; the queue
  # delay is the longest.
  defp sum(:queue_delay_ms, a, b), do: max(a, b)
  defp sum(_key, a, b) when is_map(a), do: Map.merge(a, b)
  defp sum(_key, a, b), do: a + b

  # Busy share of capacity now, and wait/run percentiles over the window.
  defp timing(pools, timings) do
    {load, capacity} =
      for pool <- pools, {_id, w} <- pool.workers, reduce: {0, 0} do
        {load, capacity} -> {load + w.load, capacity + w.capacity}
      end

    %{
      utilization: if(capacity == 0, do: 0.0, else: Float.round(load / capacity, 3)),
      wait_time_ms: Timings.percentiles(timings, :wait),
      run_time_ms: Timings.percentiles(timings, :run)
    }
  end
end
