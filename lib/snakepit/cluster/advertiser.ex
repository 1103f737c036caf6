defmodule Snakepit.Cluster.Advertiser do
  @moduledoc false
  # One per node when `config :snakepit, cluster: true`. Joins the `:pg`
  # group of Snakepit nodes, sends this node's pool adverts to the other
  # members every `advert_interval_ms`, keeps theirs in an ETS table, and
  # drops a node's adverts at once when it leaves (`:pg` leave, or nodedown).
  #
  # An advert: %{name, node, capacity, free, queued, profile, default, capabilities}.
  use GenServer

  require Logger

  @scope :snakepit_cluster
  @group :snakepit_nodes
  @table :snakepit_cluster_adverts

  def scope, do: @scope

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "Adverts of other nodes' pools, as last received."
  def remote_adverts do
    if :ets.whereis(@table) == :undefined,
      do: [],
      else: for({_key, advert} <- :ets.tab2list(@table), do: advert)
  end

  @doc "This node's pools, now."
  def local_adverts(labels \\ labels()) do
    case Process.whereis(Snakepit.Pool) do
      nil ->
        []

      _pid ->
        for {pool, index} <- Enum.with_index(Snakepit.Pool.status()) do
          {load, capacity} =
            Enum.reduce(pool.workers, {0, 0}, fn w, {l, c} ->
              if w.status == :active, do: {l + w.load, c + w.capacity}, else: {l, c}
            end)

          %{
            name: pool.name,
            node: node(),
            capacity: capacity,
            free: max(capacity - load, 0),
            queued: pool.stats.queued,
            profile: pool.profile,
            # The first pool takes calls that name none.
            default: index == 0,
            capabilities: Map.merge(hardware(), labels)
          }
        end
    end
  rescue
    # Never take the advertiser down: no advert this round.
    _ -> []
  catch
    :exit, _ -> []
  end

  def labels do
    case Snakepit.Defaults.cluster() do
      opts when is_list(opts) -> Map.new(Keyword.get(opts, :labels, %{}))
      _ -> %{}
    end
  end

  defp interval do
    case Snakepit.Defaults.cluster() do
      opts when is_list(opts) -> Keyword.get(opts, :advert_interval_ms, 200)
      _ -> 200
    end
  end

  defp hardware do
    case :persistent_term.get({__MODULE__, :hardware}, nil) do
      nil ->
        info = %{hardware: Snakepit.Hardware.identity()}
        :persistent_term.put({__MODULE__, :hardware}, info)
        info

      info ->
        info
    end
  rescue
    _ -> %{}
  end

  @impl true
  def init(_opts) do
    :ets.new(@table, [:named_table, :public, :set, read_concurrency: true])
    :ok = :pg.join(@scope, @group, self())
    {_ref, _members} = :pg.monitor(@scope, @group)
    :ok = :net_kernel.monitor_nodes(true)
    send(self(), :advertise)
    {:ok, %{}}
  end

  @impl true
  def handle_info(:advertise, state) do
    adverts = local_adverts()

    for pid <- :pg.get_members(@scope, @group),
        node(pid) != node(),
        do: send(pid, {:snakepit_advert, node(), adverts})

    Process.send_after(self(), :advertise, interval())
    {:noreply, state}
  end

  def handle_info({:snakepit_advert, from, adverts}, state) do
    # A node's adverts replace its previous ones (pools may have gone).
    new? = :ets.match(@table, {{from, :_}, :_}) == []
    :ets.match_delete(@table, {{from, :_}, :_})
    :ets.insert(@table, for(a <- adverts, do: {{from, a.name}, a}))

    # "Up" once its pools can be routed to.
    if new? and adverts != [] do
      Snakepit.Telemetry.emit([:snakepit, :cluster, :node, :up], %{pools: length(adverts)}, %{
        node: from
      })
    end

    {:noreply, state}
  end

  def handle_info({_ref, :join, @group, pids}, state) do
    # A newcomer hears from us at once, not at our next tick.
    for pid <- pids,
        node(pid) != node(),
        do: send(pid, {:snakepit_advert, node(), local_adverts()})

    {:noreply, state}
  end

  def handle_info({_ref, :leave, @group, pids}, state) do
    for pid <- pids, do: forget(node(pid))
    {:noreply, state}
  end

  def handle_info({:nodedown, node}, state) do
    forget(node)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

  defp forget(node) do
    if :ets.match(@table, {{node, :_}, :_}) != [] do
      :ets.match_delete(@table, {{node, :_}, :_})
      Snakepit.Telemetry.emit([:snakepit, :cluster, :node, :down], %{count: 1}, %{node: node})
    end
  end
end
