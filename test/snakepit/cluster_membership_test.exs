defmodule Snakepit.ClusterMembershipTest do
  # Nodes joining, stopping and being killed, each test with peers of its
  # own (so that a killed peer disturbs no other test's cluster).
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 300_000

  alias Snakepit.{Cluster, Telemetry}
  alias Snakepit.Cluster.LocalPeer, as: PeerCluster
  alias Snakepit.Test.AppPool

  setup_all do
    PeerCluster.ensure_distributed!()
    :ok = AppPool.start!(pool_size: 1, cluster: [labels: %{zone: "a"}, advert_interval_ms: 100])
  end

  test "a node that joins later takes load" do
    {peer_b, b} = PeerCluster.start!(:b, cluster: [labels: %{zone: "b"}, advert_interval_ms: 100])
    on_exit(fn -> PeerCluster.stop(peer_b) end)
    wait_for_nodes([b])
    {peer, f} = PeerCluster.start!(:f, cluster: [labels: %{zone: "f"}, advert_interval_ms: 100])
    on_exit(fn -> PeerCluster.stop(peer) end)
    wait_for_nodes([f])
    f_pid = os_pid(pid_on(f))

    # Every other pool busy: :any finds the newcomer's free slot.
    busy =
      for where <- [:local, b] do
        Task.async(fn -> Snakepit.execute("sleep", %{ms: 1_500}, node: where) end)
      end

    wait_busy_here()
    wait_busy(b)
    assert {:ok, %{"pid" => ^f_pid}} = Snakepit.execute("get_pid", %{}, node: :any)
    for task <- busy, do: assert({:ok, _} = Task.await(task, 10_000))
  end

  test "sessions pin to their node; :hint moves when it is gone, strict fails naming it" do
    {peer, d} =
      PeerCluster.start!(:d, cluster: [labels: %{zone: "d"}, advert_interval_ms: 100])

    wait_for_nodes([d])
    req = %{zone: "d"}
    {:ok, %{"pid" => first}} = Snakepit.execute_in_session("s-d", "get_pid", %{}, require: req)

    for _ <- 1..3 do
      assert {:ok, %{"pid" => ^first}} =
               Snakepit.execute_in_session("s-d", "get_pid", %{}, node: :any)
    end

    PeerCluster.stop(peer)
    wait_gone(d)

    assert {:error, %Snakepit.Error{category: :pool, message: msg}} =
             Snakepit.execute_in_session("s-d", "get_pid", %{},
               node: :any,
               affinity: :strict_fail_fast
             )

    assert msg =~ Atom.to_string(d)

    assert {:ok, %{"pid" => moved}} =
             Snakepit.execute_in_session("s-d", "get_pid", %{}, node: :any)

    assert moved != first
  end

  test "a node killed mid-load: its calls end at once with an error naming it, idempotent ones elsewhere" do
    {_peer, e} =
      PeerCluster.start!(:e, cluster: [labels: %{zone: "e"}, advert_interval_ms: 100])

    wait_for_nodes([e])
    os_pid = :erpc.call(e, System, :pid, [])
    watch_calls()
    tag = Integer.to_string(System.unique_integer([:positive]))

    # This node busy and e free: :any sends this idempotent call to e. Once
    # e is gone it must be routed again, and runs here.
    here_busy = Task.async(fn -> Snakepit.execute("sleep", %{ms: 1_500}) end)
    wait_busy_here()
    moved_id = "moved-" <> tag

    moved =
      Task.async(fn ->
        Snakepit.execute("sleep", %{ms: 4_000},
          node: :any,
          idempotent: true,
          timeout: 30_000,
          correlation_id: moved_id
        )
      end)

    assert_receive {:sent, ^e, ^moved_id}, 10_000

    calls =
      for i <- 1..4 do
        id = "pinned-#{i}-" <> tag

        {id,
         Task.async(fn ->
           Snakepit.execute("sleep", %{ms: 5_000}, node: e, timeout: 30_000, correlation_id: id)
         end)}
      end

    # The requirement only e has: routed again, it finds no pool.
    zone_id = "zone-" <> tag

    idempotent =
      Task.async(fn ->
        Snakepit.execute("sleep", %{ms: 2_000},
          require: %{zone: "e"},
          idempotent: true,
          timeout: 30_000,
          correlation_id: zone_id
        )
      end)

    # Every call is on its way to e, and e runs one (its advert reads busy):
    # then kill -9 its VM.
    for {id, _} <- calls, do: assert_receive({:sent, ^e, ^id}, 10_000)
    assert_receive {:sent, ^e, ^zone_id}, 10_000
    wait_busy(e)
    killed_at = System.monotonic_time(:millisecond)
    System.cmd("kill", ["-9", os_pid])

    for {_id, task} <- calls do
      assert {:error, %Snakepit.Error{category: :pool, message: msg}} = Task.await(task, 20_000)
      assert msg =~ Atom.to_string(e)
    end

    # Nobody waited out the 30 s timeout.
    assert System.monotonic_time(:millisecond) - killed_at < 10_000

    # The idempotent calls were routed again instead of failing with the
    # node: the one needing zone "e" finds none, the other ran here, on
    # this node's worker, after the call that kept it busy.
    assert {:error, %Snakepit.Error{category: :pool, details: %{reason: :no_pool}}} =
             Task.await(idempotent, 20_000)

    assert {:ok, %{"pid" => pid, "slept_ms" => 4_000}} = Task.await(moved, 20_000)
    assert {:ok, %{"pid" => ^pid}} = Task.await(here_busy, 20_000)
    here = node()
    assert_received {:executed, ^here, ^moved_id, true}
    refute_received {:sent, ^e, ^moved_id}

    wait_gone(e)
    refute e in Cluster.nodes()
  end

  # Calls this node sends to another ({:sent, node, correlation_id}) and
  # calls its own pool ran ({:executed, node, correlation_id, success}).
  defp watch_calls do
    parent = self()
    id = {:watch_calls, make_ref()}

    :ok =
      Telemetry.attach_many(
        id,
        [[:snakepit, :cluster, :call, :start], [:snakepit, :request, :executed]],
        fn
          [:snakepit, :cluster, :call, :start], _, meta, _ ->
            send(parent, {:sent, meta.node, meta.correlation_id})

          [:snakepit, :request, :executed], _, meta, _ ->
            send(parent, {:executed, meta.node, meta.correlation_id, meta.success})
        end,
        nil
      )

    on_exit(fn -> Telemetry.detach(id) end)
  end

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

  defp wait_busy_here, do: wait_busy(node())

  defp wait_busy(node) do
    case Enum.find(Cluster.pools(), &(&1.node == node)) do
      %{free: 0} -> :ok
      _ -> receive(after: (10 -> wait_busy(node)))
    end
  end

  defp wait_gone(node) do
    if node in Cluster.nodes(), do: receive(after: (10 -> wait_gone(node))), else: :ok
  end
end
