defmodule Snakepit.ClusterTest do
  # Pools across real BEAM nodes: this VM and peers started with :peer on
  # this machine, each with a real pool of one Python worker.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 300_000

  alias Snakepit.{Cluster, Telemetry}
  alias Snakepit.Test.AppPool
  alias Snakepit.Cluster.LocalPeer, as: PeerCluster

  setup_all do
    PeerCluster.ensure_distributed!()
    :ok = AppPool.start!(pool_size: 1, cluster: [labels: %{zone: "a"}, advert_interval_ms: 100])

    {peer_b, b} =
      PeerCluster.start!(:b, cluster: [labels: %{zone: "b"}, advert_interval_ms: 100])

    {peer_c, c} =
      PeerCluster.start!(:c,
        cluster: [labels: %{zone: "c", gpu: true}, advert_interval_ms: 100]
      )

    on_exit(fn ->
      PeerCluster.stop(peer_b)
      PeerCluster.stop(peer_c)
    end)

    wait_for_nodes([b, c])
    # And until every pool's worker shows in its advert.
    :ok = PeerCluster.await_pools(3)
    %{b: b, c: c}
  end

  # Until every node's pool is known here, by the telemetry the advertiser
  # emits when a node's first advert arrives (or it is already known).
  defp wait_for_nodes(nodes) do
    parent = self()
    id = {:wait_nodes, make_ref()}

    :ok =
      Telemetry.attach(
        id,
        [:snakepit, :cluster, :node, :up],
        fn _, _, %{node: n}, _ -> send(parent, {:up, n}) end,
        nil
      )

    for node <- nodes, node not in Cluster.nodes() do
      assert_receive {:up, ^node}, 30_000
    end

    Telemetry.detach(id)
  end

  defp pid_on(node),
    do: {:ok, %{"pid" => _}} = :erpc.call(node, Snakepit, :execute, ["get_pid", %{}])

  defp os_pid(result), do: elem(result, 1)["pid"]

  test "pools/0 lists every node's pool with capacity, free slots and capabilities", %{b: b, c: c} do
    pools = Cluster.pools()
    assert Enum.sort(Enum.map(pools, & &1.node)) == Enum.sort([node(), b, c])

    for pool <- pools do
      assert pool.capacity == 1 and pool.free in [0, 1] and pool.profile in [:process, :thread]
      assert is_map(pool.capabilities.hardware)
    end

    assert Enum.find(pools, &(&1.node == c)).capabilities.gpu == true
  end

  test "node: runs on that node; :local and no option stay here", %{b: b} do
    {:ok, %{"pid" => remote}} = Snakepit.execute("get_pid", %{}, node: b)
    assert remote == os_pid(pid_on(b))
    {:ok, %{"pid" => here}} = Snakepit.execute("get_pid", %{}, node: :local)
    assert {:ok, %{"pid" => ^here}} = Snakepit.execute("get_pid", %{})
    refute here == remote
    assert {:ok, %{"result" => 5}} = Snakepit.execute("add", %{a: 2, b: 3}, node: b)

    # A Python exception raised on b arrives as the same struct a local call
    # gets, with b's message and traceback.
    assert {:error, %Snakepit.Error.ValueError{python_type: "ValueError"} = error} =
             Snakepit.execute("error_demo", %{error_type: "value", message: "raised on b"},
               node: b
             )

    assert error.message =~ "raised on b"
    assert error.python_traceback =~ "error_demo"
    assert error.context.tool == "error_demo"
  end

  test "an unknown node or a bad option is a clear error" do
    assert {:error, %Snakepit.Error{category: :pool, message: msg}} =
             Snakepit.execute("ping", %{}, node: :nobody@nowhere)

    assert msg =~ "nobody@nowhere"

    assert {:error, %Snakepit.Error{category: :validation}} =
             Snakepit.execute("ping", %{}, node: "b")

    assert {:error, %Snakepit.Error{category: :pool}} =
             Snakepit.execute("ping", %{}, require: %{zone: "mars"})
  end

  test ":any uses this node while it has a free slot, then the others", %{b: b, c: c} do
    {:ok, %{"pid" => here}} = Snakepit.execute("get_pid", %{})
    assert {:ok, %{"pid" => ^here}} = Snakepit.execute("get_pid", %{}, node: :any)

    busy = Task.async(fn -> Snakepit.execute("sleep", %{ms: 1_500}) end)
    wait_busy_here()
    {:ok, %{"pid" => elsewhere}} = Snakepit.execute("get_pid", %{}, node: :any)
    assert elsewhere in [os_pid(pid_on(b)), os_pid(pid_on(c))]
    assert {:ok, _} = Task.await(busy, 5_000)
  end

  test ":any calls this node would refuse as overloaded run where there is room", %{b: b, c: c} do
    # The local pool learns that sleep takes ~300 ms; with its one worker
    # busy, a call with a 400 ms budget cannot finish here in time.
    {:ok, _} = Snakepit.execute("sleep", %{ms: 300})
    busy = Task.async(fn -> Snakepit.execute("sleep", %{ms: 1_500}) end)
    wait_busy_here()

    assert {:error, %Snakepit.Error{details: %{reason: :overloaded}}} =
             Snakepit.execute("sleep", %{ms: 300}, timeout: 400)

    for _ <- 1..3 do
      assert {:ok, %{"pid" => pid}} =
               Snakepit.execute("sleep", %{ms: 300}, node: :any, timeout: 400)

      assert pid in [os_pid(pid_on(b)), os_pid(pid_on(c))]
    end

    assert {:ok, _} = Task.await(busy, 5_000)
  end

  defp wait_busy_here do
    # The local pool's advert is read live: busy once the call holds the slot.
    case Enum.find(Cluster.pools(), &(&1.node == node())) do
      %{free: 0} -> :ok
      _ -> receive(after: (5 -> wait_busy_here()))
    end
  end

  test "require: picks pools by capability", %{c: c} do
    gpu = os_pid(pid_on(c))

    for _ <- 1..3 do
      assert {:ok, %{"pid" => ^gpu}} = Snakepit.execute("get_pid", %{}, require: %{gpu: true})
    end

    {:ok, %{"pid" => here}} = Snakepit.execute("get_pid", %{}, require: %{zone: "a"})
    assert here != gpu
  end

  test "streams keep order and backpressure across nodes, and :halt stops the remote producer", %{
    b: b
  } do
    parent = self()

    :ok =
      Snakepit.execute_stream("stream_data", %{count: 5}, &send(parent, {:chunk, &1["index"]}),
        node: b
      )

    indexes =
      for _ <- 1..5,
          do:
            (
              assert_receive {:chunk, i}
              i
            )

    assert indexes == Enum.to_list(Enum.min(indexes)..Enum.max(indexes))

    :ok =
      Snakepit.execute_stream(
        "stream_data",
        %{count: 10_000},
        fn chunk ->
          send(parent, {:halted_chunk, chunk["index"]})
          if chunk["index"] >= 3, do: :halt, else: :ok
        end,
        node: b
      )

    n = count(:halted_chunk, 0)
    assert n in 3..5
    # The remote worker is free again: the producer stopped.
    assert {:ok, _} = Snakepit.execute("ping", %{}, node: b, timeout: 5_000)
  end

  defp count(tag, n) do
    receive do
      {^tag, _} -> count(tag, n + 1)
    after
      0 -> n
    end
  end

  test "zero-copy refs cross nodes as bytes and are shared memory again on each side", %{b: b} do
    # 64 KiB: large enough to share memory (smaller refs copy anyway).
    floats = for i <- 1..16_384, into: <<>>, do: <<i * 1.0::float-32-native>>
    {:ok, ref} = Snakepit.ZeroCopy.to_dlpack(floats, dtype: :float32, shape: {128, 128})
    assert ref.copy == false

    assert {:ok, %{"dtype" => "float32", "shape" => [128, 128], "sum" => sum}} =
             Snakepit.execute("array_stats", %{"array" => ref}, node: b)

    assert sum == 16_384 * 16_385 / 2

    # A ref made in b's worker comes back as a ref of this node.
    {:ok, %Snakepit.ZeroCopyRef{shape: {128, 128}, copy: false} = out} =
      Snakepit.execute("scale_array", %{"array" => ref, "factor" => 2}, node: b)

    {:ok, bin} = Snakepit.ZeroCopy.from_dlpack(out)
    assert for(<<v::float-32-native <- bin>>, do: v) == Enum.map(1..16_384, &(&1 * 2.0))
  end

  test "get_stats(:cluster) sums every node", %{b: b, c: c} do
    {:ok, _} = Snakepit.execute("ping", %{}, node: b)
    stats = Snakepit.get_stats(:cluster)
    assert Enum.sort(Map.keys(stats.nodes)) == Enum.sort([node(), b, c])
    assert stats.workers == 3
    assert stats.requests == Enum.sum(Enum.map(Map.values(stats.nodes), & &1.requests))
  end

  test "remote calls emit cluster events with the node; the executing node's events carry it too",
       %{b: b} do
    parent = self()
    id = "cluster-events"

    :ok =
      Telemetry.attach(
        id,
        [:snakepit, :cluster, :call, :stop],
        fn _, m, md, _ -> send(parent, {:stop, m, md}) end,
        nil
      )

    on_exit(fn -> Telemetry.detach(id) end)
    {:ok, _} = Snakepit.execute("ping", %{}, node: b, correlation_id: "cid-cluster")

    assert_receive {:stop, %{duration: d},
                    %{node: ^b, result: :ok, correlation_id: "cid-cluster"}}

    assert is_integer(d)
  end
end
