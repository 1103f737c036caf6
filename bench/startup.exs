# Time from starting Snakepit until its workers are ready, for 16 and 100
# process-profile workers, with the default startup batching and with the
# whole pool in one batch; and what the time goes into.
#
#     MIX_ENV=prod mix run bench/startup.exs
#     BENCH_WORKERS=16,100 MIX_ENV=prod mix run bench/startup.exs
#
# "first ready" is when await_ready/2 returns (each pool has a worker);
# "all ready" when await_init_complete/2 returns (every worker started).
# CPU comes from bench/support/cpu.exs (per-thread schedstat, ns), read once
# every worker is ready: the workers' processes (all their CPU since they
# were forked or spawned), the fork server's, and the BEAM's during the
# start. Workers are forked from a warm fork server (Snakepit.Worker.ForkServer)
# unless BENCH_FORK_SERVER=false. A first start of the smallest pool is run
# and thrown away, so that no measured run pays for cold caches.
#
# Prints the figures and writes them to bench/results/startup.txt, or with
# BENCH_FORK_SERVER=false to bench/results/startup_no_fork_server.txt, so
# that the results of both stay side by side.

Code.require_file("support/cpu.exs", __DIR__)

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.Startup do
  import Bench.Args, only: [env_ints: 2, median: 1]
  alias Bench.CPU

  def run do
    counts = env_ints("BENCH_WORKERS", [16, 100])
    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    # The discarded warm-up run.
    measure(Enum.min(counts), "warm-up", %{})

    lines =
      [
        "startup  #{DateTime.utc_now() |> DateTime.truncate(:second)}  cores=#{System.schedulers_online()}  load1=#{load}  mix_env=#{Mix.env()}  fork_server=#{System.get_env("BENCH_FORK_SERVER") != "false"}",
        CPU.precision() <> "; one warm-up start discarded",
        python_baseline(),
        "workers  batching                first ready   all ready   python cpu/worker   fork server cpu   python cpu total   beam cpu"
      ] ++
        for n <- counts,
            {label, pool} <- [
              {"default (8 / 750 ms)", %{}},
              {"one batch", %{startup_batch_size: n}}
            ] do
          measure(n, label, pool)
        end

    Application.stop(:snakepit)
    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")

    file =
      if System.get_env("BENCH_FORK_SERVER") == "false",
        do: "bench/results/startup_no_fork_server.txt",
        else: "bench/results/startup.txt"

    File.write!(file, Enum.join(lines, "\n") <> "\n")
    IO.puts("written to #{file}")
  end

  # One Python process: interpreter + grpc/protobuf + snakepit_bridge imports.
  defp python_baseline do
    {:ok, python} = Snakepit.PythonRuntime.executable()
    env = [{"PYTHONPATH", Enum.join(Snakepit.PythonRuntime.python_path(), ":")}]

    code =
      "import time,resource; import grpc, google.protobuf; from snakepit_bridge import server; " <>
        "r=resource.getrusage(resource.RUSAGE_SELF); print(r.ru_utime+r.ru_stime)"

    runs =
      for _ <- 1..5 do
        t0 = System.monotonic_time(:millisecond)
        {out, 0} = System.cmd(python, ["-c", code], env: env)
        {System.monotonic_time(:millisecond) - t0, String.to_float(String.trim(out)) * 1000}
      end

    {walls, cpus} = Enum.unzip(runs)

    "one python import of grpc + snakepit_bridge: wall #{median(walls)} ms, cpu #{Float.round(median(cpus), 1)} ms (median of 5)"
  end

  defp measure(n, label, pool) do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :fork_server, System.get_env("BENCH_FORK_SERVER") != "false")
    Application.put_env(:snakepit, :pools, [Map.merge(%{name: :default, pool_size: n}, pool)])

    beam = CPU.beam_os_pid()
    beam0 = CPU.snapshot([beam])
    t0 = System.monotonic_time(:millisecond)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 120_000)
    first = System.monotonic_time(:millisecond) - t0
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 120_000)
    all = System.monotonic_time(:millisecond) - t0
    beam_ms = CPU.diff(beam0, CPU.snapshot([beam])).ns[beam] / 1_000_000

    workers =
      for id <- Snakepit.list_workers() do
        {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
        meta.os_pid
      end

    # All their CPU since they began: they did not exist before the start.
    fork_servers = Snakepit.Worker.ForkServer.os_pids()
    since_start = CPU.diff(%{}, CPU.snapshot(workers ++ fork_servers))
    worker_ms = CPU.total(since_start, workers) / 1_000_000
    # The fork server's own start (one import of grpc and the bridge).
    fork_ms = CPU.total(since_start, fork_servers) / 1_000_000
    ready = length(workers)

    :io_lib.format("~7B  ~-22s ~8B ms  ~8B ms  ~13.1f ms  ~13.1f ms  ~13.1f ms  ~9.1f ms~s", [
      n,
      label,
      first,
      all,
      worker_ms / max(ready, 1),
      fork_ms * 1.0,
      (worker_ms + fork_ms) * 1.0,
      beam_ms * 1.0,
      if(ready == n, do: "", else: "  (only #{ready} ready)")
    ])
    |> IO.iodata_to_binary()
  end
end

Bench.Startup.run()
