defmodule Snakepit.Cluster do
  @moduledoc """
  Pools across the nodes of one Erlang cluster, on `:pg` (no membership
  protocol of Snakepit's own).

      config :snakepit, cluster: true
      # or, with labels for capability routing:
      config :snakepit, cluster: [labels: %{gpu: true}, advert_interval_ms: 200]

  Off by default: single-node users see no change, and a call leaves its
  node only when asked. With it on, each node joins the `:pg` scope
  `:snakepit_cluster` and advertises its pools every `advert_interval_ms`:
  name, node, capacity, free slots, queue, profile and capabilities
  (`%{hardware: Snakepit.Hardware.identity()}` plus the node's labels).
  `pools/0` lists them across the cluster.

  ## Routing

  `Snakepit.execute/3`, `execute_stream/4` and the session variants take:

    * `node: name` - run on that node (`{:error, %Snakepit.Error{category:
      :pool}}` naming it when it is not in the cluster);
    * `node: :local` - the default: this node, as without a cluster;
    * `node: :any` - this node when its pool has a free slot, else the pool
      with the most free slots elsewhere, else queue on the one with the
      most capacity for its queue;
    * `require: %{gpu: true}` - only pools whose capabilities have these
      values (implies `:any` unless `node:` is given).

  An `:any` call (without a session) that the chosen pool refuses as
  `:overloaded` (it could not finish in time there, so it never ran) goes
  on to another node with a free slot when there is one.

  Results have the same shapes as local calls. Streams are relayed chunk by
  chunk, each acknowledged by the caller, so order and backpressure hold and
  `:halt` stops the remote producer.

  ## Sessions

  A session routed with `node: :any` (or `require:`) is pinned to the node of
  its first call, whose pool then keeps it on its worker. When that node is
  gone, `affinity: :hint` (the default) routes it anew;
  `affinity: :strict_queue | :strict_fail_fast` fail at once with a `:pool`
  error naming the node.

  ## Failure

  A node that leaves is dropped from routing at once (`:pg` membership and
  node monitors). A call in flight to it ends at once with a `:pool` error
  naming it (`:erpc` monitors the connection), not at its timeout; with
  `idempotent: true` and `:any` routing it is retried on another node.

  ## Data

  Arguments and results travel as terms over distribution. Zero-copy refs
  are sent as their bytes and become shared-memory refs again on the other
  node (copying across nodes, zero-copy within each). Large messages do not
  hold up other traffic on the connection: the distribution layer (OTP 22
  and later) splits them into fragments that interleave with other
  messages.

  ## Telemetry and stats

  The caller's node emits `[:snakepit, :cluster, :call, :start | :stop]`
  with `node` and `pool` in the metadata; the executing node emits its usual
  events, with `node` in `[:snakepit, :request, :executed]`. Nodes joining
  and leaving emit `[:snakepit, :cluster, :node, :up | :down]`.
  `Snakepit.get_stats(:cluster)` sums the stats of every node.
  """

  alias Snakepit.Cluster.{Advertiser, Remote, Transfer}
  alias Snakepit.Error

  @sessions :snakepit_cluster_sessions
  @in_flight :snakepit_cluster_in_flight
  @strict [:strict_queue, :strict_fail_fast]
  @margin_ms 1_000

  @doc "Whether `config :snakepit, cluster:` turns clustering on."
  @spec enabled?() :: boolean()
  def enabled? do
    case Snakepit.Defaults.cluster() do
      true -> true
      opts when is_list(opts) -> Keyword.get(opts, :enabled, true)
      _ -> false
    end
  end

  @doc false
  def child_specs do
    if enabled?() do
      [%{id: :snakepit_pg, start: {:pg, :start_link, [Advertiser.scope()]}}, Advertiser]
    else
      []
    end
  end

  @doc """
  Every pool in the cluster: this node's (current) and the others' (as last
  advertised), each `%{name, node, capacity, free, queued, profile,
  default, capabilities}`.
  """
  @spec pools() :: [map()]
  def pools, do: Advertiser.local_adverts() ++ Advertiser.remote_adverts()

  @doc "The nodes with Snakepit pools, this one first."
  @spec nodes() :: [node()]
  def nodes, do: Enum.uniq([node() | Enum.map(Advertiser.remote_adverts(), & &1.node)])

  # -- routing -----------------------------------------------------------------

  @doc false
  # Where a call goes: :local (no routing asked for), {:local, pool_name}
  # (routed here), {:remote, node, pool_name}, or an error.
  @spec target(keyword()) ::
          :local | {:local, atom()} | {:remote, node(), atom()} | {:error, Error.t()}
  def target(opts) when not is_list(opts), do: :local

  def target(opts) do
    # Most calls ask for no routing: no lookup beyond these two.
    if :lists.keymember(:node, 1, opts) or :lists.keymember(:require, 1, opts),
      do: route(opts),
      else: :local
  end

  defp route(opts) do
    node_opt =
      Keyword.get(opts, :node, if(Keyword.has_key?(opts, :require), do: :any, else: :local))

    cond do
      node_opt in [:local, node()] and not Keyword.has_key?(opts, :require) ->
        :local

      not enabled?() ->
        {:error,
         Error.validation_error("node: and require: need config :snakepit, cluster: true")}

      node_opt == :any or node_opt == node() ->
        route_any(opts)

      is_atom(node_opt) ->
        route_node(node_opt, opts)

      true ->
        {:error,
         Error.validation_error(
           "node must be a node name, :local or :any, got: #{inspect(node_opt)}"
         )}
    end
  end

  defp route_node(node, opts) do
    case candidates(opts) |> Enum.filter(&(&1.node == node)) do
      [pool | _] -> {:remote, node, pool.name}
      [] -> {:error, node_error(node, "is not in the cluster (or has no matching pool)")}
    end
  end

  defp route_any(opts) do
    case session_pin(opts) do
      {:pinned, node} ->
        if alive?(node), do: pinned_target(node, opts), else: lost_session(node, opts)

      :none ->
        pick(opts, Keyword.get(opts, :avoid_nodes, []))
    end
  end

  defp pinned_target(node, opts) do
    case route_node(node, opts) do
      {:error, _} = error -> error
      {:remote, ^node, name} when node == node() -> {:local, name}
      remote -> remote
    end
  end

  defp lost_session(node, opts) do
    if Keyword.get(opts, :affinity) in @strict do
      {:error,
       node_error(
         node,
         "is gone; session #{inspect(opts[:session_id])} was pinned to it (strict affinity)"
       )}
    else
      pick(opts, [node | Keyword.get(opts, :avoid_nodes, [])])
    end
  end

  # Local first when it has a free slot, else the most free slots, else the
  # least loaded for its size (where the call queues). A remote pool's load
  # is what it last advertised or, when more, the calls this node has in
  # flight there (adverts are up to advert_interval_ms old).
  defp pick(opts, avoid) do
    pools =
      candidates(opts)
      |> Enum.reject(&(&1.node in avoid))
      |> Enum.map(&Map.put(&1, :load, load(&1)))

    best =
      Enum.find(pools, &(&1.node == node() and &1.load < &1.capacity)) ||
        Enum.max_by(Enum.filter(pools, &(&1.load < &1.capacity)), &(&1.capacity - &1.load), fn ->
          nil
        end) ||
        Enum.min_by(pools, &((&1.load + &1.queued) / max(&1.capacity, 1)), fn -> nil end)

    case best do
      nil ->
        {:error,
         Error.pool_error("no pool in the cluster matches #{describe(opts)}", %{
           reason: :no_pool,
           require: opts[:require]
         })}

      %{node: node, name: name} when node == node() ->
        pin(opts, node)
        {:local, name}

      %{node: node, name: name} ->
        pin(opts, node)
        {:remote, node, name}
    end
  end

  defp load(pool), do: max(pool.capacity - pool.free, in_flight({pool.node, pool.name}))

  defp in_flight(key) do
    case :ets.whereis(@in_flight) != :undefined and :ets.lookup(@in_flight, key) do
      [{_, n}] -> n
      _ -> 0
    end
  end

  defp tracked(key, fun) do
    table = Snakepit.ETSOwner.ensure_table(@in_flight)
    :ets.update_counter(table, key, 1, {key, 0})

    try do
      fun.()
    after
      :ets.update_counter(table, key, -1, {key, 0})
    end
  end

  defp candidates(opts) do
    wanted = Keyword.get(opts, :pool)
    require = Keyword.get(opts, :require, %{})

    pools()
    |> Enum.filter(fn pool ->
      if wanted in [nil, Snakepit.Pool], do: pool.default, else: pool.name == wanted
    end)
    |> Enum.filter(&matches?(&1.capabilities, require))
  end

  defp matches?(capabilities, require) when is_map(require) do
    Enum.all?(require, fn {key, value} ->
      found = Map.get(capabilities, key, Map.get(capabilities, to_string(key)))
      found == value
    end)
  end

  defp matches?(_capabilities, _require), do: false

  defp describe(opts) do
    "pool #{inspect(opts[:pool] || :default)}" <>
      if(opts[:require], do: " with #{inspect(opts[:require])}", else: "")
  end

  defp alive?(node), do: node == node() or node in Node.list()

  defp session_pin(opts) do
    with id when is_binary(id) <- opts[:session_id],
         true <- :ets.whereis(@sessions) != :undefined,
         [{^id, node}] <- :ets.lookup(@sessions, id) do
      {:pinned, node}
    else
      _ -> :none
    end
  end

  defp pin(opts, node) do
    if id = opts[:session_id] do
      :ets.insert(Snakepit.ETSOwner.ensure_table(@sessions), {id, node})
    end
  end

  # -- calls ---------------------------------------------------------------------

  @doc false
  # A call routed here: counted in flight like a remote one, so that
  # concurrent routing decisions see it before its pool does.
  def execute({:local, pool}, command, args, opts) do
    tracked({node(), pool}, fn ->
      Snakepit.Pool.execute(command, args, Keyword.put(opts, :pool, pool))
    end)
    |> elsewhere_if_shed(node(), opts, &Snakepit.execute(command, args, &1))
  end

  def execute({:remote, node, pool}, command, args, opts) do
    opts = with_correlation(opts)

    node
    |> remote_execute(pool, command, args, opts)
    |> elsewhere_if_shed(node, opts, &Snakepit.execute(command, args, &1))
  end

  defp remote_execute(node, pool, command, args, opts) do
    span(node, pool, command, opts, fn ->
      try do
        :erpc.call(
          node,
          Remote,
          :execute,
          [command, Transfer.to_portable(args), remote_opts(opts, pool)],
          erpc_timeout(opts)
        )
        |> Transfer.into_local()
      catch
        :error, {:erpc, :noconnection} ->
          gone(node, opts, fn retry -> Snakepit.execute(command, args, retry) end)

        :error, {:erpc, :timeout} ->
          {:error,
           Error.timeout_error("the call on #{node} did not finish in time", %{node: node})}

        :error, {:exception, reason, _stack} ->
          {:error, node_error(node, "could not run the call: #{inspect(reason)}")}

        :error, {:erpc, reason} ->
          {:error, node_error(node, "could not be reached: #{inspect(reason)}")}

        :error, %ArgumentError{} = e ->
          {:error, Error.validation_error(Exception.message(e))}
      end
    end)
  end

  @doc false
  def execute_stream({:local, pool}, command, args, callback, opts) do
    tracked({node(), pool}, fn ->
      Snakepit.Pool.execute_stream(command, args, callback, Keyword.put(opts, :pool, pool))
    end)
  end

  def execute_stream({:remote, node, pool}, command, args, callback, opts) do
    opts = with_correlation(opts)

    span(node, pool, command, opts, fn ->
      ref = make_ref()
      exported = Transfer.to_portable(args)

      pid =
        Node.spawn(node, Remote, :stream, [
          self(),
          ref,
          command,
          exported,
          remote_opts(opts, pool)
        ])

      monitor = Process.monitor(pid)

      relay(ref, pid, monitor, callback, node, erpc_timeout(opts), opts, fn retry ->
        Snakepit.execute_stream(command, args, callback, retry)
      end)
    end)
  rescue
    e in ArgumentError -> {:error, Error.validation_error(Exception.message(e))}
  end

  defp relay(ref, pid, monitor, callback, node, timeout, opts, retry) do
    receive do
      {^ref, :chunk, chunk} ->
        answer = if callback.(Transfer.into_local(chunk)) == :halt, do: :halt, else: :cont
        send(pid, {ref, answer})
        relay(ref, pid, monitor, callback, node, timeout, opts, retry)

      {^ref, :done, result} ->
        Process.demonitor(monitor, [:flush])
        Transfer.into_local(result)

      {:DOWN, ^monitor, :process, ^pid, :noconnection} ->
        gone(node, opts, retry)

      {:DOWN, ^monitor, :process, ^pid, reason} ->
        {:error, node_error(node, "stream relay ended: #{inspect(reason)}")}
    after
      timeout ->
        Process.exit(pid, :kill)

        {:error,
         Error.timeout_error("the stream on #{node} did not finish in time", %{node: node})}
    end
  end

  # A call :any routing placed on a pool that refused it as overloaded (so
  # it never ran) goes to another node with a free slot, when there is one
  # (adverts can be a moment old when the call was routed).
  defp elsewhere_if_shed(
         {:error, %Error{details: %{reason: :overloaded}}} = shed,
         node,
         opts,
         retry
       ) do
    avoid = [node | Keyword.get(opts, :avoid_nodes, [])]

    if any_routing?(opts) and is_nil(opts[:session_id]) and room_elsewhere?(opts, avoid) do
      retry.(opts |> Keyword.put(:node, :any) |> Keyword.put(:avoid_nodes, avoid))
    else
      shed
    end
  end

  defp elsewhere_if_shed(result, _node, _opts, _retry), do: result

  defp any_routing?(opts) do
    Keyword.get(opts, :node, if(Keyword.has_key?(opts, :require), do: :any)) == :any and
      enabled?()
  end

  defp room_elsewhere?(opts, avoid) do
    opts
    |> candidates()
    |> Enum.any?(&(&1.node not in avoid and load(&1) < &1.capacity))
  end

  # The node went away during the call: idempotent :any calls go elsewhere.
  defp gone(node, opts, retry) do
    if Keyword.get(opts, :idempotent) == true and Keyword.get(opts, :node, :any) == :any do
      forget_pin(opts)
      retry.(Keyword.put(opts, :node, :any) |> Keyword.update(:avoid_nodes, [node], &[node | &1]))
    else
      {:error, node_error(node, "left the cluster during the call")}
    end
  end

  defp forget_pin(opts) do
    if (id = opts[:session_id]) && :ets.whereis(@sessions) != :undefined,
      do: :ets.delete(@sessions, id)
  end

  defp remote_opts(opts, pool) do
    opts
    |> portable_deadline()
    |> Keyword.drop([:node, :require, :pool, :pool_server, :avoid_nodes])
    |> Keyword.put(:pool, pool)
  end

  # Monotonic clocks differ between nodes: an absolute deadline travels as
  # what is left of it.
  defp portable_deadline(opts) do
    case Keyword.get(opts, :deadline_ms) do
      at when is_integer(at) ->
        left = max(at - System.monotonic_time(:millisecond), 1)
        timeout = Snakepit.Pool.Deadline.earliest(Keyword.get(opts, :timeout) || :infinity, left)
        opts |> Keyword.delete(:deadline_ms) |> Keyword.put(:timeout, timeout)

      _ ->
        opts
    end
  end

  defp with_correlation(opts) do
    if opts[:correlation_id],
      do: opts,
      else: Keyword.put(opts, :correlation_id, Snakepit.Telemetry.Correlation.new_id())
  end

  defp erpc_timeout(opts) do
    case Keyword.get(opts, :timeout) do
      :infinity -> :infinity
      ms when is_integer(ms) -> ms + @margin_ms
      _ -> Snakepit.Defaults.pool_streaming_timeout() + @margin_ms
    end
  end

  defp span(node, pool, command, opts, fun) do
    meta = %{node: node, pool: pool, command: command, correlation_id: opts[:correlation_id]}

    Snakepit.Telemetry.emit(
      [:snakepit, :cluster, :call, :start],
      %{system_time: System.system_time()},
      meta
    )

    started = System.monotonic_time()
    result = tracked({node, pool}, fun)
    outcome = if match?({:error, _}, result), do: :error, else: :ok

    Snakepit.Telemetry.emit(
      [:snakepit, :cluster, :call, :stop],
      %{duration: System.monotonic_time() - started},
      Map.put(meta, :result, outcome)
    )

    result
  end

  defp node_error(node, what),
    do: Error.pool_error("node #{node} #{what}", %{node: node, reason: :node})

  # -- stats ---------------------------------------------------------------------

  @doc """
  The stats of every node's pools (`Snakepit.get_stats/0` there), and their
  sums: `%{nodes: %{node => stats}, requests:, errors:, workers:, busy:,
  available:, queued:}`. A node that does not answer within 5 s is left out.
  """
  @spec stats() :: map()
  def stats do
    nodes = nodes()

    per_node =
      nodes
      |> :erpc.multicall(Remote, :stats, [], 5_000)
      |> Enum.zip(nodes)
      |> Enum.flat_map(fn
        {{:ok, stats}, node} when is_map(stats) -> [{node, stats}]
        _ -> []
      end)
      |> Map.new()

    sums =
      for key <- [:requests, :errors, :workers, :busy, :available, :queued], into: %{} do
        {key, per_node |> Map.values() |> Enum.map(&Map.get(&1, key, 0)) |> Enum.sum()}
      end

    Map.put(sums, :nodes, per_node)
  end
end
