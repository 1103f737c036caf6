defmodule Snakepit.Status do
  @moduledoc """
  What `mix snakepit.status` shows: each pool (profile, size and the range
  it may breathe in, ready, busy
  and down slots, queue, utilization, recent errors, wait and run times)
  and each worker (id, OS pid, resident memory, requests served, uptime,
  state), and whether all of it is healthy. `snapshot/0` runs on the node
  that has the pools (the task calls it over distribution with `--node`).
  """

  alias Snakepit.Worker.LifecycleManager

  @type snapshot :: %{
          node: node(),
          pools: [map()],
          healthy: boolean(),
          reason: String.t() | nil
        }

  @doc "The pools and workers of this node, now."
  @spec snapshot() :: snapshot()
  def snapshot do
    pools =
      if Process.whereis(Snakepit.Pool),
        do: Enum.map(Snakepit.Pool.status(), &with_workers/1),
        else: []

    reason = unhealthy_reason(pools)
    %{node: node(), pools: pools, healthy: reason == nil, reason: reason}
  end

  defp with_workers(pool) do
    workers =
      Enum.map(pool.workers, fn w ->
        Map.merge(w, %{
          rss_mb: LifecycleManager.rss_mb(w.os_pid),
          requests: LifecycleManager.request_count(w.id),
          state: worker_state(w)
        })
      end)

    %{pool | workers: workers}
  end

  defp worker_state(%{status: :retiring}), do: :retiring
  defp worker_state(%{load: load}) when load > 0, do: :busy
  defp worker_state(_), do: :ready

  # The first problem found, in one line; nil when healthy.
  defp unhealthy_reason([]),
    do: "no pool is running (pooling_enabled is false, or Snakepit is not started)"

  defp unhealthy_reason(pools) do
    Enum.find_value(pools, fn pool ->
      cond do
        pool.stats.workers == 0 ->
          "pool #{inspect(pool.name)} has no ready worker (#{pool.stats.slots_down} slots down)"

        pool.stats.slots_down > 0 ->
          "pool #{inspect(pool.name)} has #{pool.stats.slots_down} of #{pool.size} slots down"

        true ->
          nil
      end
    end)
  end

  @doc "The snapshot as text, a line per pool and per worker."
  @spec format(snapshot()) :: String.t()
  def format(snapshot) do
    pools = Enum.map(snapshot.pools, &format_pool/1)
    verdict = if snapshot.healthy, do: "healthy", else: "UNHEALTHY: #{snapshot.reason}"
    Enum.join(["Snakepit on #{snapshot.node}: #{verdict}" | pools], "\n\n") <> "\n"
  end

  defp format_pool(pool) do
    s = pool.stats

    header =
      "pool #{inspect(pool.name)}  profile=#{inspect(pool.profile)}  size=#{size(pool)}  " <>
        "ready=#{s.workers} busy=#{s.busy} down=#{s.slots_down}  queued=#{s.queued}  " <>
        "utilization=#{percent(s.utilization)}  requests=#{s.requests} errors=#{s.errors} " <>
        "queue_timeouts=#{s.queue_timeouts} saturated=#{s.pool_saturated} shed=#{s.shed} " <>
        "queue_delay=#{s.queue_delay_ms}ms\n" <>
        "  wait ms p50/p90/p99=#{ms(s.wait_time_ms)}  run ms p50/p90/p99=#{ms(s.run_time_ms)}"

    down =
      for {id, slot} <- s.down,
          do: "  down #{id}: #{slot.status}, #{slot.failures} failures: #{slot.reason}"

    workers =
      for w <- pool.workers do
        "  #{String.pad_trailing(w.id, 24)} os_pid=#{w.os_pid}  rss=#{mb(w.rss_mb)}  " <>
          "requests=#{w.requests}  uptime=#{div(w.uptime_ms, 1000)}s  #{w.state} (#{w.load}/#{w.capacity})"
      end

    Enum.join([header | down ++ workers], "\n")
  end

  # "3" for a fixed pool, "3 (1..4)" for an elastic one.
  defp size(%{size: size, min_workers: same, max_workers: same}), do: "#{size}"
  defp size(%{size: size, min_workers: min, max_workers: max}), do: "#{size} (#{min}..#{max})"

  defp percent(u), do: "#{round(u * 100)}%"
  defp mb(nil), do: "?"
  defp mb(value), do: "#{Float.round(value, 1)}MB"

  defp ms(%{p50: p50, p90: p90, p99: p99}), do: Enum.map_join([p50, p90, p99], "/", &(&1 || "-"))
end
