# Routing across nodes, in one run on this machine: calls/s of a tool that
# sleeps 20 ms on 1, 2 and 3 nodes of one worker each (this node plus
# peers started with :peer), callers = 2 per node, node: :any; and the
# added latency of a remote call over a local one (ping, one caller,
# alternating rounds). Medians of BENCH_ROUNDS rounds.
#
#     MIX_ENV=prod mix run bench/cluster.exs
#
# Prints the figures and writes them to bench/results/cluster.txt.

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.Cluster do
  import Bench.Args, only: [env_ints: 2, median: 1]
  alias Snakepit.Cluster.LocalPeer

  @window_ms 3_000
  @sleep_ms 20

  def run do
    rounds = env_ints("BENCH_ROUNDS", [3]) |> hd()
    LocalPeer.ensure_distributed!()
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pools, [%{name: :default, pool_size: 1}])
    Application.put_env(:snakepit, :cluster, advert_interval_ms: 100)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete()

    peers =
      for name <- [:bench_b, :bench_c],
          do: LocalPeer.start!(name, cluster: [advert_interval_ms: 100])

    :ok = LocalPeer.await_pools(3)
    [{_, b}, {_, c}] = peers

    throughput =
      for {n, nodes} <- [{1, [node()]}, {2, [node(), b]}, {3, [node(), b, c]}] do
        per_round = for _ <- 1..rounds, do: calls_per_s(nodes, 2 * n)
        {n, median(per_round)}
      end

    {local, remote} = latency(b, rounds)
    {quiet, busy, transfer} = latency_beside_bulk(b)
    for {peer, _} <- peers, do: LocalPeer.stop(peer)

    one = elem(hd(throughput), 1)

    lines =
      [
        "cluster  #{DateTime.utc_now() |> DateTime.truncate(:second)}  rounds=#{rounds}  window=#{@window_ms}ms  " <>
          "tool=sleep #{@sleep_ms}ms  cores=#{System.schedulers_online()}  mix_env=#{Mix.env()}",
        "nodes  callers  calls/s   vs 1 node"
      ] ++
        for {n, rate} <- throughput do
          "#{n}      #{2 * n}        #{fmt(rate)}    #{fmt(rate / one)}x"
        end ++
        [
          "ping p50, one caller: local #{fmt(local)} us, remote #{fmt(remote)} us, " <>
            "a remote call adds #{fmt(remote - local)} us",
          "remote ping p50 while another process sends 64 MiB terms to that node without pause: " <>
            "#{fmt(busy)} us (#{fmt(quiet)} us without), while one such transfer takes #{fmt(transfer / 1000)} ms: " <>
            "fragments interleave, so a small call waits for a share of the link, not for the whole transfer"
        ]

    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/cluster.txt", Enum.join(lines, "\n") <> "\n")
  end

  # `callers` processes call the sleep tool with node: :any, restricted to
  # the first nodes by require: on a label each node has.
  defp calls_per_s(nodes, callers) do
    deadline = System.monotonic_time(:millisecond) + @window_ms

    counts =
      1..callers
      |> Task.async_stream(fn _ -> loop(nodes, deadline, 0) end,
        timeout: @window_ms + 30_000,
        max_concurrency: callers
      )
      |> Enum.map(fn {:ok, n} -> n end)

    Enum.sum(counts) * 1000 / @window_ms
  end

  defp loop(nodes, deadline, n) do
    if System.monotonic_time(:millisecond) >= deadline do
      n
    else
      opts =
        if nodes == [node()],
          do: [],
          else: [node: :any, avoid_nodes: Snakepit.Cluster.nodes() -- nodes]

      {:ok, _} = Snakepit.execute("sleep", %{ms: @sleep_ms}, opts)
      loop(nodes, deadline, n + 1)
    end
  end

  defp latency(remote_node, rounds) do
    samples =
      for _ <- 1..rounds, where <- [:local, remote_node] do
        opts = if where == :local, do: [], else: [node: remote_node]

        times =
          for _ <- 1..300,
              do: elem(:timer.tc(fn -> {:ok, _} = Snakepit.execute("ping", %{}, opts) end), 0)

        {where, median(times)}
      end

    pick = fn w ->
      samples |> Enum.filter(&(elem(&1, 0) == w)) |> Enum.map(&elem(&1, 1)) |> median()
    end

    {pick.(:local), pick.(remote_node)}
  end

  # The distribution channel under bulk traffic: remote pings beside a
  # process sending 64 MiB binaries to the same node.
  defp latency_beside_bulk(node) do
    ping = fn ->
      for(
        _ <- 1..200,
        do: elem(:timer.tc(fn -> {:ok, _} = Snakepit.execute("ping", %{}, node: node) end), 0)
      )
      |> median()
    end

    quiet = ping.()
    big = :binary.copy(<<1>>, 64 * 1024 * 1024)

    transfer =
      median(
        for _ <- 1..3,
            do: elem(:timer.tc(fn -> :erpc.call(node, :erlang, :byte_size, [big]) end), 0)
      )

    bulk = spawn(fn -> bulk_loop(node, big) end)
    busy = ping.()
    Process.exit(bulk, :kill)
    {quiet, busy, transfer}
  end

  defp bulk_loop(node, big) do
    _ = :erpc.call(node, :erlang, :byte_size, [big])
    bulk_loop(node, big)
  end

  defp fmt(x), do: :erlang.float_to_binary(x / 1, decimals: 1)
end

Bench.Cluster.run()
