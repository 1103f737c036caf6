# Time from starting Snakepit until its workers are ready, for 16 and 100
# process-profile workers, with the default startup batching and with the
# whole pool in one batch; and what the time goes into.
#
#     MIX_ENV=prod mix run bench/startup.exs
#     BENCH_WORKERS=16,100 MIX_ENV=prod mix run bench/startup.exs
#
# "first ready" is when await_ready/2 returns (each pool has a worker);
# "all ready" when await_init_complete/2 returns (every worker started).
# Python CPU is the summed utime+stime of the workers' processes once ready;
# workers are forked from a warm fork server (Snakepit.ForkServer) unless
# BENCH_FORK_SERVER=false, and its own CPU is shown apart.
#
# Prints the figures and writes them to bench/results/startup.txt.

defmodule Bench.Startup do
  @tick_ms 10

  def run do
    counts = env_ints("BENCH_WORKERS", [16, 100])
    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    lines =
      [
        "startup  #{DateTime.utc_now() |> DateTime.truncate(:second)}  cores=#{System.schedulers_online()}  load1=#{load}  mix_env=#{Mix.env()}  fork_server=#{System.get_env("BENCH_FORK_SERVER") != "false"}",
        python_baseline(),
        "workers  batching                first ready   all ready   python cpu/worker   fork server cpu   python cpu total / cores   beam cpu"
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
    File.write!("bench/results/startup.txt", Enum.join(lines, "\n") <> "\n")
    IO.puts("written to bench/results/startup.txt")
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

    beam = String.to_integer(System.pid())
    beam0 = cpu_ms(beam)
    t0 = System.monotonic_time(:millisecond)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 120_000)
    first = System.monotonic_time(:millisecond) - t0
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 120_000)
    all = System.monotonic_time(:millisecond) - t0
    beam_cpu = cpu_ms(beam) - beam0

    cpu =
      for id <- Snakepit.list_workers(), reduce: 0 do
        acc ->
          {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
          acc + cpu_ms(meta.os_pid)
      end

    ready = length(Snakepit.list_workers())
    # The fork server's own start (one import of grpc and the bridge).
    fork_cpu = Enum.sum(Enum.map(Snakepit.ForkServer.os_pids(), &cpu_ms/1))

    :io_lib.format("~7B  ~-22s ~8B ms  ~8B ms  ~13.1f ms  ~13B ms  ~19.1f ms  ~12B ms~s", [
      n,
      label,
      first,
      all,
      cpu / max(ready, 1),
      fork_cpu,
      (cpu + fork_cpu) / System.schedulers_online(),
      beam_cpu,
      if(ready == n, do: "", else: "  (only #{ready} ready)")
    ])
    |> IO.iodata_to_binary()
  end

  defp cpu_ms(os_pid) do
    [_, rest] = File.read!("/proc/#{os_pid}/stat") |> String.split(") ", parts: 2)
    fields = String.split(rest)
    (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * @tick_ms
  end

  defp median(list), do: list |> Enum.sort() |> Enum.at(div(length(list), 2))

  defp env_ints(name, default) do
    case System.get_env(name) do
      nil -> default
      v -> v |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
    end
  end
end

Bench.Startup.run()
