# Pools across BEAM nodes: this node and two peer nodes started here with
# :peer (Snakepit.Cluster.LocalPeer), each with a pool of one Python worker,
# routed by node, by free capacity and by capability.
#
#     mix run examples/distributed_pools.exs
#
# Needs epmd (it comes with Erlang; started here when it is not running).

defmodule DistributedPools do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 36) <> inspect(value, pretty: true, width: 90))

  def run do
    alias Snakepit.Cluster.LocalPeer
    LocalPeer.ensure_distributed!()

    # This node joins the cluster too.
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :cluster, labels: %{zone: "here"}, advert_interval_ms: 100)
    Application.put_env(:snakepit, :pools, [%{name: :default, pool_size: 1}])
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete()

    peers =
      for {name, labels} <- [{:west, %{zone: "west"}}, {:gpu, %{zone: "east", gpu: true}}] do
        LocalPeer.start!(name, cluster: [labels: labels, advert_interval_ms: 100])
      end

    [{_, west}, {_, gpu}] = peers
    :ok = LocalPeer.await_pools(3)

    show(
      "pools in the cluster",
      Enum.map(Snakepit.Cluster.pools(), &Map.take(&1, [:node, :name, :capacity, :free]))
    )

    show("get_pid here", Snakepit.execute("get_pid", %{}))
    show("get_pid on #{west}", Snakepit.execute("get_pid", %{}, node: west))
    show("require gpu: true", Snakepit.execute("get_pid", %{}, require: %{gpu: true}))

    # :any: here while free, then the node with the most free slots.
    results =
      1..6
      |> Task.async_stream(fn _ -> Snakepit.execute("sleep", %{ms: 200}, node: :any) end,
        max_concurrency: 6
      )
      |> Enum.map(fn {:ok, {:ok, %{"pid" => pid}}} -> pid end)

    show("6 calls with node: :any ran in pids", Enum.frequencies(results))

    parent = self()

    :ok =
      Snakepit.execute_stream("stream_data", %{count: 3}, &send(parent, {:chunk, &1["index"]}),
        node: gpu
      )

    show("stream from #{gpu}", for(_ <- 1..3, do: receive(do: ({:chunk, i} -> i))))
    show("cluster stats", Map.take(Snakepit.get_stats(:cluster), [:workers, :requests]))

    for {peer, _} <- peers, do: LocalPeer.stop(peer)
    Application.stop(:snakepit)
    Application.delete_env(:snakepit, :cluster)
  end
end

DistributedPools.run()
