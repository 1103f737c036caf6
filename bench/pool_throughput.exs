# Throughput and latency of Snakepit.execute("ping") through the whole stack
# (caller -> pool checkout -> native core -> gRPC over a Unix socket ->
# Python -> back), beside a plain Python grpcio client (bench/grpc_client.py)
# calling the same workers over the same sockets in the same run, in two
# modes: "py-pooled" keeps one call in flight per worker, as the process
# profile does; "py-open" lets every caller stick to a worker, so a worker
# may have several calls in flight, as the thread profile does. Each
# profile is compared with the client that keeps its discipline:
# process-profile pools with py-pooled, thread-profile pools with py-open.
#
#     MIX_ENV=prod mix run bench/pool_throughput.exs
#     BENCH_CALLS=3000 BENCH_POOL_SIZES=2,4 BENCH_CONCURRENCY=1,8,32 \
#       BENCH_PROFILES=process,thread BENCH_ROUNDS=3 mix run bench/pool_throughput.exs
#
# CPU per call is measured from /proc: the BEAM's OS process (schedulers,
# dirty schedulers and the native core's tokio threads: everything on the
# Elixir + Rust side), the Python client's own process time, and the
# workers' processes. Run the BEAM without scheduler busy-waiting so that
# spinning is not counted as work:
#
#     ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/pool_throughput.exs
#
# Prints the figures and writes them to bench/results/pool_throughput.txt.

defmodule Bench.PoolThroughput do
  @tick_us 1_000_000 / 100

  def run do
    calls = env_ints("BENCH_CALLS", [3_000]) |> hd()
    sizes = env_ints("BENCH_POOL_SIZES", [2, 4])
    concurrencies = env_ints("BENCH_CONCURRENCY", [1, 8, 32])
    rounds = env_ints("BENCH_ROUNDS", [3]) |> hd()

    profiles =
      (System.get_env("BENCH_PROFILES") || "process,thread")
      |> String.split(",", trim: true)
      |> Enum.map(fn
        "process" -> :process
        "thread" -> :thread
      end)

    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    header = [
      "pool_throughput  #{DateTime.utc_now() |> DateTime.truncate(:second)}  " <>
        "calls=#{calls}  rounds=#{rounds}  cores=#{System.schedulers_online()}  load1=#{load}  " <>
        "ERL_FLAGS=#{inspect(System.get_env("ERL_FLAGS"))}  mix_env=#{Mix.env()}",
      "client     profile pool conc      ops/s    p50 us    p99 us   client-cpu us/call   worker-cpu us/call"
    ]

    IO.puts(Enum.join(header, "\n"))

    rows =
      for profile <- profiles, size <- sizes do
        start_pool(size, profile)
        addresses = worker_addresses()
        worker_pids = worker_os_pids()
        # Warm up the workers and the channels.
        measure_snakepit(8, 500)

        for c <- concurrencies do
          # Rounds alternate the three clients, so a noisy neighbour hits
          # all of them alike; each figure is the round with median ops/s.
          results =
            for _ <- 1..rounds do
              {measure(fn -> measure_snakepit(c, calls) end, worker_pids, calls),
               python_client(addresses, c, calls, worker_pids, "pooled"),
               python_client(addresses, c, calls, worker_pids, "open")}
            end

          [sp, pooled, open] = for i <- 0..2, do: median_by_ops(Enum.map(results, &elem(&1, i)))

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
    breakdown = breakdown()
    Enum.each(breakdown, &IO.puts/1)

    text =
      Enum.join(header ++ Enum.flat_map(rows, &elem(&1, 0)) ++ [overhead | breakdown], "\n") <>
        "\n"

    File.mkdir_p!("bench/results")
    File.write!("bench/results/pool_throughput.txt", text)
    IO.puts("written to bench/results/pool_throughput.txt")
  end

  defp median_by_ops(results),
    do: results |> Enum.sort_by(& &1.ops) |> Enum.at(div(length(results), 2))

  defp row(client, profile, size, c, m) do
    :io_lib.format("~-10s ~7s ~4B ~4B ~10.1f ~9.1f ~9.1f ~20.1f ~20.1f", [
      client,
      Atom.to_string(profile),
      size,
      c,
      m.ops * 1.0,
      m.p50 * 1.0,
      m.p99 * 1.0,
      m.client_cpu * 1.0,
      m.worker_cpu * 1.0
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
  defp breakdown do
    start_pool(2, :process)
    workers = worker_channels()
    calls = 6_000
    beam = String.to_integer(System.pid())

    per_call = fn fun ->
      c0 = cpu_us(beam)
      fun.()
      (cpu_us(beam) - c0) / calls
    end

    two_callers = fn call ->
      0..1
      |> Task.async_stream(fn i -> for _ <- 1..div(calls, 2), do: call.(i) end,
        max_concurrency: 2,
        timeout: :infinity
      )
      |> Stream.run()
    end

    sched =
      per_call.(fn ->
        two_callers.(fn _ ->
          {:ok, lease} = Snakepit.Pool.checkout([], :infinity)
          Snakepit.Pool.checkin(lease, :ok)
        end)
      end)

    native =
      per_call.(fn ->
        two_callers.(fn i ->
          deadline = System.monotonic_time(:millisecond) + 60_000

          {:ok, _} =
            Snakepit.GRPC.Client.execute(Enum.at(workers, i), "ping", %{}, deadline: deadline)
        end)
      end)

    full = per_call.(fn -> two_callers.(fn _ -> {:ok, _} = Snakepit.execute("ping", %{}) end) end)

    [
      "CPU per call of the BEAM OS process, 2 workers, 2 callers, #{calls} calls:",
      "  pool scheduling only (checkout + checkin): #{Float.round(sched, 1)} us",
      "  native call only (Client.execute):         #{Float.round(native, 1)} us",
      "  full Snakepit.execute:                     #{Float.round(full, 1)} us"
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

  # CPU time (us) of an OS process, from /proc/<pid>/stat (utime + stime).
  defp cpu_us(os_pid) do
    stat = File.read!("/proc/#{os_pid}/stat")
    [_, rest] = String.split(stat, ") ", parts: 2)
    fields = String.split(rest)
    (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * @tick_us
  end

  defp measure(fun, worker_pids, calls) do
    beam = String.to_integer(System.pid())
    beam0 = cpu_us(beam)
    workers0 = Enum.sum(Enum.map(worker_pids, &cpu_us/1))
    result = fun.()
    beam_cpu = cpu_us(beam) - beam0
    worker_cpu = Enum.sum(Enum.map(worker_pids, &cpu_us/1)) - workers0
    Map.merge(result, %{client_cpu: beam_cpu / calls, worker_cpu: worker_cpu / calls})
  end

  defp measure_snakepit(concurrency, calls) do
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

  defp python_client(addresses, concurrency, calls, worker_pids, mode) do
    {:ok, python} = Snakepit.PythonRuntime.executable()

    args = [
      "bench/grpc_client.py",
      "--concurrency",
      "#{concurrency}",
      "--calls",
      "#{calls}",
      "--mode",
      mode
    ]

    args = args ++ Enum.flat_map(addresses, &["--address", &1])
    # The workers answer only calls that carry the VM's secret, which a
    # process of the same user can read from a worker's environment.
    env = [
      {"PYTHONPATH", Enum.join(Snakepit.PythonRuntime.python_path(), ":")},
      {"SNAKEPIT_AUTH_TOKEN", secret_of(hd(worker_pids))}
    ]

    workers0 = Enum.sum(Enum.map(worker_pids, &cpu_us/1))
    {out, 0} = System.cmd(python, args, env: env)
    worker_cpu = Enum.sum(Enum.map(worker_pids, &cpu_us/1)) - workers0
    r = out |> String.split("\n", trim: true) |> List.last() |> JSON.decode!()

    %{
      ops: r["ops"],
      p50: r["p50_us"],
      p99: r["p99_us"],
      client_cpu: r["cpu_us_per_call"],
      # Includes the warm-up calls; close enough for a per-call figure.
      worker_cpu: worker_cpu / (calls + 200)
    }
  end

  defp env_ints(name, default) do
    case System.get_env(name) do
      nil -> default
      v -> v |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
    end
  end
end

Bench.PoolThroughput.run()
