# Throughput and latency of Snakepit.execute("ping") through the whole stack
# (caller -> pool checkout -> native core -> gRPC over a Unix socket ->
# Python -> back), beside a plain Python grpcio client (bench/grpc_client.py)
# calling the same workers over the same sockets in the same run, in two
# modes: "py-pooled" keeps one call in flight per worker, as the process
# profile does; "py-open" lets every caller stick to a worker, so a worker
# may have several calls in flight, as the thread profile does. Each
# profile is compared with the client that keeps its discipline:
# process-profile pools with py-pooled, thread-profile pools with py-open.
# Both clients decode each result from JSON.
#
#     MIX_ENV=prod mix run bench/pool_throughput.exs
#     BENCH_CALLS=3000 BENCH_POOL_SIZES=2,4 BENCH_CONCURRENCY=1,8,32 \
#       BENCH_PROFILES=process,thread BENCH_ROUNDS=3 BENCH_BREAKDOWN_CALLS=6000 \
#       mix run bench/pool_throughput.exs
#
# Each round runs the three clients one after the other, the order rotated
# by one each round (so with 3 rounds each client is first once); every
# figure is the median over the rounds, with the rounds' ops/s range beside
# it. Each client makes div(calls, concurrency) * concurrency calls, and its
# figures are divided by the calls it made.
#
# CPU per call is measured with bench/support/cpu.exs (per-thread schedstat,
# ns) in a window that opens after the client's warm-up calls have all been
# answered and closes when its measured calls have: for Snakepit around the
# measured calls; for the Python client between its "warm" and "done" lines
# (bench/grpc_client.py --handshake). "client cpu" is the BEAM's OS process
# (schedulers, dirty schedulers and the native core's tokio threads:
# everything on the Elixir + Rust side) or the Python client's process;
# "worker cpu" is the workers' processes. Run the BEAM without scheduler
# busy-waiting so that spinning is not counted as work:
#
#     ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/pool_throughput.exs
#
# Prints the figures and writes them to bench/results/pool_throughput.txt.

Code.require_file("support/cpu.exs", __DIR__)

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.PoolThroughput do
  import Bench.Args, only: [env_ints: 2]
  alias Bench.CPU

  @warmup 200

  def run do
    calls = env_ints("BENCH_CALLS", [3_000]) |> hd()
    sizes = env_ints("BENCH_POOL_SIZES", [2, 4])
    concurrencies = env_ints("BENCH_CONCURRENCY", [1, 8, 32])
    rounds = env_ints("BENCH_ROUNDS", [3]) |> hd()
    breakdown_calls = env_ints("BENCH_BREAKDOWN_CALLS", [6_000]) |> hd()

    profiles =
      (System.get_env("BENCH_PROFILES") || "process,thread")
      |> String.split(",", trim: true)
      |> Enum.map(fn
        "process" -> :process
        "thread" -> :thread
      end)

    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    # What reading the CPU costs, with the largest pool's workers read too.
    start_pool(Enum.max(sizes), hd(profiles))
    empty = CPU.empty_window_ns(worker_os_pids())

    header = [
      "pool_throughput  #{DateTime.utc_now() |> DateTime.truncate(:second)}  " <>
        "calls=#{calls}  rounds=#{rounds}  cores=#{System.schedulers_online()}  load1=#{load}  " <>
        "ERL_FLAGS=#{inspect(System.get_env("ERL_FLAGS"))}  mix_env=#{Mix.env()}",
      CPU.precision(empty),
      "figures: median of the rounds (order rotated each round); calls made = " <>
        "div(calls, conc) * conc; CPU window after warm-up (#{@warmup} calls), to the last answer",
      "client     profile pool conc  calls      ops/s   ops/s range    p50 us    p99 us   " <>
        "client-cpu us/call   worker-cpu us/call"
    ]

    IO.puts(Enum.join(header, "\n"))

    rows =
      for profile <- profiles, size <- sizes do
        start_pool(size, profile)
        addresses = worker_addresses()
        worker_pids = worker_os_pids()
        # Warm up the workers and the channels.
        snakepit_calls(8, 500)

        for c <- concurrencies do
          n = div(calls, c) * c

          variants = [
            {"snakepit", fn -> snakepit_round(c, n, worker_pids) end},
            {"py-pooled", fn -> python_round(addresses, c, n, worker_pids, "pooled") end},
            {"py-open", fn -> python_round(addresses, c, n, worker_pids, "open") end}
          ]

          # Round r starts with variant r mod 3: a drift in the machine's
          # speed hits every client alike.
          by_variant =
            for r <- 0..(rounds - 1),
                {name, fun} <- rotate(variants, r),
                reduce: %{} do
              acc ->
                result = fun.()
                Map.update(acc, name, [result], &[result | &1])
            end

          [sp, pooled, open] =
            for name <- ["snakepit", "py-pooled", "py-open"], do: medians(by_variant[name])

          {peer, peer_ops} =
            if profile == :process, do: {"py-pooled", pooled}, else: {"py-open", open}

          lines = [
            row("snakepit", profile, size, c, sp),
            row("py-pooled", profile, size, c, pooled),
            row("py-open", profile, size, c, open),
            "  -> snakepit ops / #{peer} #{Float.round(sp.ops / peer_ops.ops, 2)} " <>
              "(/ py-pooled #{Float.round(sp.ops / pooled.ops, 2)}, " <>
              "/ py-open #{Float.round(sp.ops / open.ops, 2)})"
          ]

          Enum.each(lines, &IO.puts/1)
          {lines, %{size: size, conc: c, sp: sp, py: peer_ops}}
        end
      end
      |> List.flatten()

    overhead = overhead_summary(Enum.map(rows, &elem(&1, 1)))
    IO.puts(overhead)
    breakdown = breakdown(breakdown_calls)
    Enum.each(breakdown, &IO.puts/1)

    text =
      Enum.join(header ++ Enum.flat_map(rows, &elem(&1, 0)) ++ [overhead | breakdown], "\n") <>
        "\n"

    File.mkdir_p!("bench/results")
    File.write!("bench/results/pool_throughput.txt", text)
    IO.puts("written to bench/results/pool_throughput.txt")
  end

  defp rotate(list, r) do
    {front, back} = Enum.split(list, rem(r, length(list)))
    back ++ front
  end

  # The median of each figure over the rounds, and the rounds' ops/s range.
  defp medians(results) do
    figures =
      Map.new([:ops, :p50, :p99, :client_cpu, :worker_cpu], fn key ->
        {key, median(Enum.map(results, &Map.fetch!(&1, key)))}
      end)

    ops = Enum.map(results, & &1.ops)

    Map.merge(figures, %{
      calls: hd(results).calls,
      ops_min: Enum.min(ops),
      ops_max: Enum.max(ops),
      lost_threads: Enum.sum(Enum.map(results, & &1.lost_threads))
    })
  end

  defp median(values) do
    sorted = Enum.sort(values)
    n = length(sorted)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, div(n, 2)),
      else: (Enum.at(sorted, div(n, 2) - 1) + Enum.at(sorted, div(n, 2))) / 2
  end

  defp row(client, profile, size, c, m) do
    :io_lib.format("~-10s ~7s ~4B ~4B ~6B ~10.1f ~6B-~-6B ~9.1f ~9.1f ~20.1f ~20.1f~s", [
      client,
      Atom.to_string(profile),
      size,
      c,
      m.calls,
      m.ops * 1.0,
      round(m.ops_min),
      round(m.ops_max),
      m.p50 * 1.0,
      m.p99 * 1.0,
      m.client_cpu * 1.0,
      m.worker_cpu * 1.0,
      if(m.lost_threads > 0, do: "  (#{m.lost_threads} threads exited in a window)", else: "")
    ])
    |> IO.iodata_to_binary()
  end

  defp overhead_summary(results) do
    per_call = Enum.map(results, & &1.sp.client_cpu)

    "Elixir+Rust CPU per Snakepit call (whole BEAM OS process): min #{Float.round(Enum.min(per_call), 1)} us, " <>
      "max #{Float.round(Enum.max(per_call), 1)} us; target < 30 us"
  end

  # Where the Elixir+Rust CPU of one call goes, with 2 workers and 2
  # callers (one call in flight per worker, as in the pool):
  #   pool scheduling - checkout + checkin only, no call to Python
  #   native call     - Snakepit.GRPC.Client.execute straight to a worker
  #   full path       - Snakepit.execute (pool + native call)
  # Each is measured 3 times; the median is printed with the range, which
  # says how far one figure can be trusted.
  defp breakdown(calls) do
    start_pool(2, :process)
    workers = worker_channels()
    per_caller = div(calls, 2)
    made = per_caller * 2
    beam = CPU.beam_os_pid()

    per_call = fn fun ->
      # One call per caller first, so that the window holds no first-call costs.
      fun.(1)
      {_, delta} = CPU.measure([beam], fn -> fun.(per_caller) end)
      delta.ns[beam] / made / 1000
    end

    two_callers = fn call ->
      fn k ->
        0..1
        |> Task.async_stream(fn i -> for _ <- 1..k, do: call.(i) end,
          max_concurrency: 2,
          timeout: :infinity
        )
        |> Stream.run()
      end
    end

    sched =
      two_callers.(fn _ ->
        {:ok, lease} = Snakepit.Pool.Call.checkout([], :infinity)
        Snakepit.Pool.Call.checkin(lease, :ok)
      end)

    native =
      two_callers.(fn i ->
        deadline = System.monotonic_time(:millisecond) + 60_000

        {:ok, _} =
          Snakepit.GRPC.Client.execute(Enum.at(workers, i), "ping", %{}, deadline: deadline)
      end)

    full = two_callers.(fn _ -> {:ok, _} = Snakepit.execute("ping", %{}) end)

    figure = fn fun ->
      runs = for _ <- 1..3, do: per_call.(fun)

      "#{Float.round(median(runs), 1)} us (3 runs: #{Float.round(Enum.min(runs), 1)}-" <>
        "#{Float.round(Enum.max(runs), 1)})"
    end

    [
      "CPU per call of the BEAM OS process, 2 workers, 2 callers, #{made} calls a run:",
      "  pool scheduling only (checkout + checkin): #{figure.(sched)}",
      "  native call only (Client.execute):         #{figure.(native)}",
      "  full Snakepit.execute:                     #{figure.(full)}"
    ]
  end

  defp worker_channels do
    for id <- Snakepit.list_workers() do
      {:ok, {pid, _}} = Snakepit.Pool.Registry.fetch_worker(id)
      info = Snakepit.GRPCWorker.get_info(pid)
      %{id: id, channel: info.channel}
    end
  end

  defp start_pool(size, profile) do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)

    # Thread-profile workers need a thread-safe adapter: the same ping,
    # declared so (bench/bench_adapters.py).
    adapter =
      if profile == :thread, do: ["--adapter", "bench_adapters.ThreadedPing"], else: []

    Application.put_env(:snakepit, :python_path, [Path.expand("bench")])

    Application.put_env(:snakepit, :pools, [
      %{
        name: :default,
        pool_size: size,
        startup_batch_size: size,
        worker_profile: profile,
        adapter_args: adapter
      }
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 60_000)
  end

  defp worker_addresses do
    for id <- Snakepit.list_workers() do
      {:ok, {pid, _}} = Snakepit.Pool.Registry.fetch_worker(id)
      Snakepit.GRPCWorker.get_info(pid).address
    end
  end

  defp worker_os_pids do
    for id <- Snakepit.list_workers() do
      {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
      meta.os_pid
    end
  end

  # Warm-up at this concurrency, then the window around the measured calls.
  defp snakepit_round(c, n, worker_pids) do
    beam = CPU.beam_os_pid()
    snakepit_calls(c, max(div(@warmup, c), 1) * c)
    {result, delta} = CPU.measure([beam | worker_pids], fn -> snakepit_calls(c, n) end)

    Map.merge(result, %{
      client_cpu: delta.ns[beam] / result.calls / 1000,
      worker_cpu: CPU.total(delta, worker_pids) / result.calls / 1000,
      lost_threads: delta.lost_threads
    })
  end

  defp snakepit_calls(concurrency, calls) do
    per_caller = div(calls, concurrency)
    started = System.monotonic_time(:microsecond)

    latencies =
      1..concurrency
      |> Task.async_stream(
        fn _ ->
          for _ <- 1..per_caller do
            t0 = System.monotonic_time(:microsecond)
            {:ok, _} = Snakepit.execute("ping", %{})
            System.monotonic_time(:microsecond) - t0
          end
        end,
        max_concurrency: concurrency,
        timeout: :infinity
      )
      |> Enum.flat_map(fn {:ok, l} -> l end)

    wall = System.monotonic_time(:microsecond) - started
    sorted = Enum.sort(latencies)
    n = length(sorted)

    %{
      calls: n,
      ops: n / (wall / 1_000_000),
      p50: Enum.at(sorted, div(n, 2)),
      p99: Enum.at(sorted, min(n - 1, trunc(n * 0.99)))
    }
  end

  defp secret_of(os_pid) do
    "/proc/#{os_pid}/environ"
    |> File.read!()
    |> String.split(<<0>>)
    |> Enum.find_value("", fn
      "SNAKEPIT_AUTH_TOKEN=" <> token -> token
      _ -> nil
    end)
  end

  # bench/grpc_client.py --handshake: it warms up, prints "warm" and waits;
  # the window opens, it is told to go, prints "done <json>" once every
  # measured call is answered and waits again; the window closes, it is told
  # to finish.
  defp python_round(addresses, concurrency, calls, worker_pids, mode) do
    {:ok, python} = Snakepit.PythonRuntime.executable()

    args =
      [
        "bench/grpc_client.py",
        "--handshake",
        "--concurrency",
        "#{concurrency}",
        "--calls",
        "#{calls}",
        "--warmup",
        "#{@warmup}",
        "--mode",
        mode
      ] ++ Enum.flat_map(addresses, &["--address", &1])

    # The workers answer only calls that carry the VM's secret, which a
    # process of the same user can read from a worker's environment.
    env = [
      {~c"PYTHONPATH", String.to_charlist(Enum.join(Snakepit.PythonRuntime.python_path(), ":"))},
      {~c"SNAKEPIT_AUTH_TOKEN", String.to_charlist(secret_of(hd(worker_pids)))}
    ]

    port =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        {:line, 65_536},
        args: args,
        env: env
      ])

    {:os_pid, client} = Port.info(port, :os_pid)
    pids = [client | worker_pids]

    "warm" = await_line(port)
    before = CPU.snapshot(pids)
    Port.command(port, "go\n")
    "done " <> json = await_line(port)
    delta = CPU.diff(before, CPU.snapshot(pids))
    Port.command(port, "exit\n")

    receive do
      {^port, {:exit_status, 0}} -> :ok
    end

    r = JSON.decode!(json)

    %{
      calls: r["calls"],
      ops: r["ops"],
      p50: r["p50_us"],
      p99: r["p99_us"],
      client_cpu: delta.ns[client] / r["calls"] / 1000,
      worker_cpu: CPU.total(delta, worker_pids) / r["calls"] / 1000,
      lost_threads: delta.lost_threads
    }
  end

  defp await_line(port) do
    receive do
      {^port, {:data, {:eol, line}}} -> line
      {^port, {:exit_status, status}} -> raise "grpc_client.py exited with #{status}"
    end
  end
end

Bench.PoolThroughput.run()
