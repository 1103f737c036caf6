defmodule Snakepit.Cluster.LocalPeer do
  @moduledoc """
  Starts peer nodes on this machine (`:peer`) running Snakepit with a pool,
  for trying the cluster out: the examples, tests and benchmarks use it.
  Production clusters start their nodes as usual.
  """

  @doc "Makes this VM a distributed node (starting epmd when it is not running)."
  @spec ensure_distributed!() :: :ok
  def ensure_distributed! do
    unless Node.alive?() do
      System.cmd("epmd", ["-daemon"])
      {:ok, _} = Node.start(:"snakepit_#{System.unique_integer([:positive])}", :shortnames)
    end

    :ok
  end

  @doc """
  Starts a peer named `name_<n>` with this VM's code paths, sets `env`
  (`config :snakepit` keys; defaults: pooling on, one worker, the cluster
  on), starts Snakepit there and waits until its pool is up. Returns
  `{peer, node}`; `stop/1` ends it.
  """
  @spec start!(atom(), keyword()) :: {pid(), node()}
  def start!(name, env \\ []) do
    # The peer's output goes to this VM's console, not to a caller's
    # captured IO (the peer's :elixir cannot set options on that).
    saved = Process.group_leader()
    Process.group_leader(self(), Process.whereis(:user) || saved)

    try do
      boot(name, env)
    after
      Process.group_leader(self(), saved)
    end
  end

  defp boot(name, env) do
    ensure_distributed!()
    # Schedulers that do not spin when idle (peers share this machine's
    # cores), and no disconnects by global's overlapping-partition guard
    # when a peer is killed (tests kill them on purpose).
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        Enum.map(
          ~w(+sbwt none +sbwtdcpu none +sbwtdio none -kernel prevent_overlapping_partitions false),
          &String.to_charlist/1
        )

    {:ok, peer, node} =
      :peer.start(%{
        name: :"#{name}_#{System.unique_integer([:positive])}",
        args: args,
        wait_boot: 30_000
      })

    :ok = :erpc.call(node, Application, :load, [:snakepit])
    env = Keyword.merge([pooling_enabled: true, pool_size: 1, cluster: true], env)

    for {key, value} <- env,
        do: :ok = :erpc.call(node, Application, :put_env, [:snakepit, key, value])

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit], 60_000)
    :ok = :erpc.call(node, Snakepit.Pool, :await_init_complete, [Snakepit.Pool, 60_000], 70_000)
    {peer, node}
  end

  @doc "Stops a peer (its workers go with it)."
  @spec stop(pid()) :: :ok
  def stop(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end

  @doc "Waits until `n` pools with a worker are known here (adverts come every advert_interval_ms)."
  @spec await_pools(pos_integer(), timeout()) :: :ok | :timeout
  def await_pools(n, timeout \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + timeout
    wait(n, deadline)
  end

  defp wait(n, deadline) do
    cond do
      Enum.count(Snakepit.Cluster.pools(), &(&1.capacity > 0)) >= n -> :ok
      System.monotonic_time(:millisecond) > deadline -> :timeout
      # The adverts are pushed to this node's ETS table: nothing to await but time.
      true -> receive(after: (20 -> wait(n, deadline)))
    end
  end
end
