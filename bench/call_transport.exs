# Snakepit's two call transports beside the leanest grpcio pair, in one run:
#
# * "grpcio pair": bench/grpcio_pair.py, bare grpc.aio servers with raw-bytes
#   handlers and a grpc.aio client keeping one call in flight per server;
# * "snakepit grpc": Snakepit.execute("add", ...) on a pool with
#   call_transport: :grpc;
# * "snakepit lane": the same on a pool with call_transport: :lane.
#
# For pools (servers) of 2 and 4 and 1, 8 and 32 callers: unary calls/s,
# p50/p99 latency, CPU per call on the caller's side (the grpcio client's
# process, or the BEAM's OS process: schedulers, the native core's threads)
# and on the workers' side; then streams (execute_stream of stream_data,
# 1000 chunks each, 8 callers) in messages/s. Each figure is the median of
# BENCH_ROUNDS rounds whose variant order rotates; every window opens after
# its warm-up. CPU comes from /proc/PID/task/TID/schedstat (ns). The
# wake-up floor (native/snakepit_core/examples/wakeup_floor.rs) is measured
# in the same run. Ratios are against the grpcio pair. For pool 2 the
# summary also splits the BEAM's CPU per call into layers (lower_layers/2):
# the BEAM's own round trip, the lane's native call alone, callers sharing
# lanes without a pool process (bench/support/lane_handoff.exs), calls
# leased from the least a pool process can be (bench/support/minimal_pool.exs)
# and from Snakepit's, to show what each layer above the transport costs.
#
#     ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/call_transport.exs
#     BENCH_CALLS=3000 BENCH_POOL_SIZES=2 BENCH_CONCURRENCY=8 BENCH_ROUNDS=3 ...
#
# Prints the figures and writes them to bench/results/call_transport.txt, or,
# when BENCH_POOL_SIZES or BENCH_CONCURRENCY narrow the run, to
# bench/results/call_transport_partial.txt (so a partial run never replaces
# the full one the docs quote).

Code.require_file("support/cpu.exs", __DIR__)

Code.require_file("support/args.exs", __DIR__)

Code.require_file("support/lane_handoff.exs", __DIR__)

Code.require_file("support/minimal_pool.exs", __DIR__)

defmodule Bench.CallTransport do
  import Bench.Args, only: [env_ints: 2, median: 1]
  alias Bench.CPU

  @variants [:pair, :grpc, :lane]
  @stream_length 1000

  def run do
    calls = env_ints("BENCH_CALLS", [4_000]) |> hd()
    sizes = env_ints("BENCH_POOL_SIZES", [2, 4])
    concurrencies = env_ints("BENCH_CONCURRENCY", [1, 8, 32])
    rounds = env_ints("BENCH_ROUNDS", [3]) |> hd()
    streams = env_ints("BENCH_STREAMS", [16]) |> hd()

    floor = wakeup_floor() |> Map.put(:beam, beam_floor(rounds))
    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    header = [
      "call_transport  #{DateTime.utc_now() |> DateTime.truncate(:second)}  calls=#{calls}  " <>
        "rounds=#{rounds} (medians; order rotates)  cores=#{System.schedulers_online()}  " <>
        "load1=#{load}  ERL_FLAGS=#{inspect(System.get_env("ERL_FLAGS"))}  mix_env=#{Mix.env()}",
      CPU.precision(CPU.empty_window_ns([CPU.beam_os_pid()])) <>
        "; caller = the grpcio client's process or the BEAM's OS process",
      "wake-up floor (one-byte request/reply between two processes): #{fmt(floor.direct)} us " <>
        "CPU per call (direct), #{fmt(floor.hop)} us with one thread hop",
      "the BEAM's own round trip (an Erlang process, gen_tcp on a Unix socket, an echo " <>
        "process; no Snakepit code): #{fmt(floor.beam)} us BEAM CPU per call = " <>
        "#{fmt(floor.beam / floor.direct, 2)}x the floor",
      "",
      "variant        pool conc     ops/s   p50 us   p99 us  caller cpu us  worker cpu us   x pair"
    ]

    Enum.each(header, &IO.puts/1)

    {unary, stream_rows} =
      Enum.reduce(sizes, {[], []}, fn size, {unary_acc, stream_acc} ->
        start_pools(size)

        unary_rows =
          for c <- concurrencies do
            results = measure_rounds(rounds, fn variant -> unary(variant, size, c, calls) end)
            rows = unary_lines(size, c, results)
            Enum.each(rows, &IO.puts/1)
            {size, c, results, rows}
          end

        results =
          measure_rounds(rounds, fn variant -> stream(variant, size, 8, streams) end)

        unary_rows =
          if size == 2,
            do: unary_rows ++ [{:layers, lower_layers(rounds, calls)}],
            else: unary_rows

        Application.stop(:snakepit)
        {unary_acc ++ unary_rows, stream_acc ++ [{size, results}]}
      end)

    stream_header = [
      "",
      "streams (#{@stream_length} chunks each, 8 callers)",
      "variant        pool      msgs/s  caller cpu us/msg  worker cpu us/msg   x pair"
    ]

    stream_lines =
      Enum.flat_map(stream_rows, fn {size, results} -> stream_lines(size, results) end)

    Enum.each(stream_header ++ stream_lines, &IO.puts/1)

    summary = summary(unary, stream_rows, floor)
    Enum.each(summary, &IO.puts/1)

    rows = for {_, _, _, rows} <- unary, do: rows
    lines = header ++ List.flatten(rows) ++ stream_header
    File.mkdir_p!("bench/results")

    partial? = System.get_env("BENCH_POOL_SIZES") || System.get_env("BENCH_CONCURRENCY")

    File.write!(
      if(partial?,
        do: "bench/results/call_transport_partial.txt",
        else: "bench/results/call_transport.txt"
      ),
      Enum.join(lines ++ stream_lines ++ summary, "\n") <> "\n"
    )
  end

  # -- running ---------------------------------------------------------------

  defp start_pools(size) do
    Application.stop(:snakepit)
    adapter = ["--adapter", "snakepit_bridge.adapters.showcase.ShowcaseAdapter"]
    Application.put_env(:snakepit, :pooling_enabled, true)

    Application.put_env(:snakepit, :pools, [
      %{name: :default, pool_size: size, call_transport: :lane, adapter_args: adapter},
      %{name: :grpc, pool_size: size, call_transport: :grpc, adapter_args: adapter}
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 60_000)
  end

  defp pool(:lane), do: :default
  defp pool(:grpc), do: :grpc

  # Each round runs every variant; the order rotates from round to round.
  defp measure_rounds(rounds, fun) do
    for round <- 0..(rounds - 1), reduce: %{} do
      acc ->
        Enum.reduce(rotate(@variants, round), acc, fn variant, acc ->
          sample = fun.(variant)
          Map.update(acc, variant, [sample], &[sample | &1])
        end)
    end
    |> Map.new(fn {variant, samples} -> {variant, medians(samples)} end)
  end

  defp medians(samples) do
    samples
    |> hd()
    |> Map.keys()
    |> Map.new(fn key -> {key, median(Enum.map(samples, & &1[key]))} end)
  end

  defp unary(:pair, size, c, calls) do
    pair([
      "--servers",
      "#{size}",
      "--concurrency",
      "#{c}",
      "--calls",
      "#{calls}",
      "--streams",
      "0"
    ])
    |> Map.take(~w(ops p50_us p99_us client_cpu_us server_cpu_us))
    |> Map.new(fn {k, v} -> {String.to_atom(k), v} end)
  end

  defp unary(variant, _size, c, calls) do
    pool = pool(variant)
    per_caller = div(calls, c)
    made = per_caller * c
    call = fn -> {:ok, %{"result" => 3}} = Snakepit.execute("add", %{a: 1, b: 2}, pool: pool) end
    run_callers(c, div(300, c) + 1, call)
    workers = worker_pids(pool)

    {{latencies, wall}, cpu} =
      CPU.measure([CPU.beam_os_pid() | workers], fn -> timed(c, per_caller, call) end)

    sorted = Enum.sort(latencies)

    %{
      ops: made / seconds(wall),
      p50_us: us(Enum.at(sorted, div(made, 2))),
      p99_us: us(Enum.at(sorted, max(div(made * 99, 100) - 1, 0))),
      client_cpu_us: CPU.total(cpu, [CPU.beam_os_pid()]) / 1_000 / made,
      server_cpu_us: CPU.total(cpu, workers) / 1_000 / made
    }
  end

  defp stream(:pair, size, c, streams) do
    pair([
      "--servers",
      "#{size}",
      "--concurrency",
      "#{c}",
      "--calls",
      "#{c}",
      "--streams",
      "#{streams}",
      "--stream-length",
      "#{@stream_length}"
    ])
    |> Map.take(~w(msgs_per_s client_cpu_us_per_msg server_cpu_us_per_msg))
    |> Map.new(fn {k, v} -> {String.to_atom(k), v} end)
  end

  defp stream(variant, _size, c, streams) do
    pool = pool(variant)
    per_caller = max(div(streams, c), 1)
    made = per_caller * c

    one = fn ->
      :ok =
        Snakepit.execute_stream("stream_data", %{count: @stream_length}, fn _ -> :ok end,
          pool: pool
        )
    end

    run_callers(c, 1, one)
    workers = worker_pids(pool)

    {{_, wall}, cpu} =
      CPU.measure([CPU.beam_os_pid() | workers], fn -> timed(c, per_caller, one) end)

    messages = made * @stream_length

    %{
      msgs_per_s: messages / seconds(wall),
      client_cpu_us_per_msg: CPU.total(cpu, [CPU.beam_os_pid()]) / 1_000 / messages,
      server_cpu_us_per_msg: CPU.total(cpu, workers) / 1_000 / messages
    }
  end

  # Where the BEAM's CPU goes, layer by layer under Snakepit.execute, in
  # rounds whose order rotates (BEAM CPU us per call, medians):
  #
  # * :native - the lane's native call alone (lane_execute and its reply
  #   through the lane's reader), one caller per worker as the process
  #   profile's capacity allows: no pool, no Snakepit.execute layers;
  # * :handoff - 8 callers on the same lanes without a pool process
  #   (Bench.LaneHandoff: a caller whose call ended writes the next
  #   waiter's request itself);
  # * :handoff_api - the same, each call also doing the per-call work the
  #   documented API asks of any design (a correlation id, a request id, a
  #   deadline timer, a monitor, the stats timings, three telemetry events),
  #   in the leanest form we know: a floor for any implementation of it;
  # * :minimal - 8 callers leasing lanes from the least a pool process can
  #   be (Bench.MinimalPool: a FIFO, caller monitors, queue timers);
  # * :pooled - 8 callers, each call leased from Snakepit's pool process
  #   (Pool.Checkout.checkout/checkin) around the native call;
  # * :execute - 8 callers, each call all of Snakepit.execute/3.
  #
  # :handoff against :minimal is what having a pool process costs per
  # call; :minimal against :pooled is what Snakepit's pool code costs.
  defp lower_layers(rounds, calls) do
    callers = 8
    per_caller = div(calls, callers)
    made = per_caller * callers

    layers = %{
      native: fn workers ->
        per_lane = div(made, length(workers))
        run_tasks(Enum.map(workers, fn w -> fn -> native_calls(w.lane, per_lane) end end))
      end,
      handoff: fn workers -> handoff_calls(workers, callers, per_caller, false) end,
      handoff_api: fn workers -> handoff_calls(workers, callers, per_caller, true) end,
      minimal: fn workers ->
        pool = Bench.MinimalPool.start(Enum.map(workers, & &1.lane))
        run_tasks(for _ <- 1..callers, do: fn -> Bench.MinimalPool.calls(pool, per_caller) end)
        Bench.MinimalPool.stop(pool)
      end,
      pooled: fn -> run_tasks(for _ <- 1..callers, do: fn -> pooled_calls(per_caller) end) end,
      # All of Snakepit.execute/3, the same tool, in the same rotation as
      # the layers (not after the grpcio pair, whose load it would pay for).
      execute: fn -> run_tasks(for _ <- 1..callers, do: fn -> execute_calls(per_caller) end) end
    }

    order = Map.keys(layers)

    for round <- 0..(rounds - 1), layer <- rotate(order, round), reduce: %{} do
      acc ->
        cpu = beam_cpu_per_call(1, made, fn -> with_lanes(layers[layer]) end)
        Map.update(acc, layer, [cpu], &[cpu | &1])
    end
    |> Map.new(fn {layer, samples} -> {layer, median(samples)} end)
  end

  defp handoff_calls(workers, callers, per_caller, features) do
    handoff = Bench.LaneHandoff.new(Enum.map(workers, &{&1.lane, &1.pid}), features: features)
    run_tasks(for _ <- 1..callers, do: fn -> Bench.LaneHandoff.calls(handoff, per_caller) end)
  end

  # Every layer but :pooled runs on both workers' lanes, their slots held
  # from the pool for the window, as a caller of the native core must.
  defp with_lanes(run) when is_function(run, 0), do: run.()

  defp with_lanes(run) do
    leases = for _ <- 1..2, do: elem(Snakepit.Pool.Checkout.checkout([], :infinity), 1)

    try do
      leases |> Enum.map(& &1.worker) |> run.()
    after
      Enum.each(leases, &Snakepit.Pool.Checkout.checkin(&1, {:ok, nil}))
    end
  end

  defp run_tasks(funs), do: funs |> Enum.map(&Task.async/1) |> Task.await_many(:infinity)

  defp rotate(list, n),
    do: Enum.drop(list, rem(n, length(list))) ++ Enum.take(list, rem(n, length(list)))

  defp pooled_calls(0), do: :ok

  defp pooled_calls(n) do
    {:ok, lease} = Snakepit.Pool.Checkout.checkout([], :infinity)
    native_calls(lease.worker.lane, 1)
    Snakepit.Pool.Checkout.checkin(lease, {:ok, nil})
    pooled_calls(n - 1)
  end

  defp execute_calls(0), do: :ok

  defp execute_calls(n) do
    {:ok, _} = Snakepit.execute("add", %{a: 1, b: 2})
    execute_calls(n - 1)
  end

  defp native_calls(_lane, 0), do: :ok

  defp native_calls(lane, n) do
    ref = make_ref()
    {:ok, _} = Snakepit.Native.lane_execute(lane, self(), ref, "add", %{a: 1, b: 2}, %{})

    receive do
      {^ref, {:ok, _}} -> native_calls(lane, n - 1)
    end
  end

  # What the BEAM itself spends on one request/reply with another OS
  # process, through the same machinery the lane's replies take (a port's
  # socket, polled by the schedulers): the least any call from Elixir can
  # cost here. Median of `rounds` windows of 10000 round trips.
  defp beam_floor(rounds) do
    path =
      Path.join(System.tmp_dir!(), "snakepit-beam-echo-#{System.unique_integer([:positive])}")

    {:ok, python} = Snakepit.PythonRuntime.executable()

    echo =
      Port.open({:spawn_executable, python}, [
        :binary,
        :exit_status,
        args: ["bench/beam_echo.py", path]
      ])

    receive do: ({^echo, {:data, "ready" <> _}} -> :ok)

    {:ok, socket} =
      :gen_tcp.connect({:local, path}, 0, [:local, :binary, packet: 4, active: true])

    echo_round_trips(socket, 1_000)
    cpu = beam_cpu_per_call(rounds, 10_000, fn -> echo_round_trips(socket, 10_000) end)
    :gen_tcp.close(socket)
    receive do: ({^echo, {:exit_status, _}} -> :ok)
    cpu
  end

  # The median over `rounds` windows of the BEAM's CPU (us) per call, `fun`
  # making `calls` calls in each.
  defp beam_cpu_per_call(rounds, calls, fun) do
    for _ <- 1..rounds do
      {_, delta} = CPU.measure([CPU.beam_os_pid()], fun)
      CPU.total(delta, [CPU.beam_os_pid()]) / 1_000 / calls
    end
    |> median()
  end

  defp echo_round_trips(_socket, 0), do: :ok

  defp echo_round_trips(socket, n) do
    :ok = :gen_tcp.send(socket, "0123456789abcdef0123456789abcdef")

    receive do
      {:tcp, ^socket, _} -> echo_round_trips(socket, n - 1)
    end
  end

  defp timed(callers, n, fun) do
    started = System.monotonic_time()
    latencies = run_callers(callers, n, fun)
    {latencies, System.monotonic_time() - started}
  end

  # `callers` processes each run `fun` `n` times; returns every duration.
  defp run_callers(callers, n, fun) do
    1..callers
    |> Enum.map(fn _ ->
      Task.async(fn ->
        for _ <- 1..n do
          t = System.monotonic_time()
          fun.()
          System.monotonic_time() - t
        end
      end)
    end)
    |> Task.await_many(:infinity)
    |> List.flatten()
  end

  defp pair(args) do
    {:ok, python} = Snakepit.PythonRuntime.executable()
    {out, 0} = System.cmd(python, ["bench/grpcio_pair.py" | args])
    out |> String.split("\n", trim: true) |> List.last() |> :json.decode()
  end

  defp worker_pids(pool) do
    for id <- Snakepit.Pool.list_workers(Snakepit.Pool, pool) do
      {:ok, pid} = Snakepit.Pool.Registry.get_worker_pid(id)
      Snakepit.GRPCWorker.get_info(pid).os_pid
    end
  end

  defp wakeup_floor do
    {out, 0} =
      System.cmd(
        "cargo",
        ["run", "--release", "-q", "-p", "snakepit_core", "--example", "wakeup_floor"],
        stderr_to_stdout: true
      )

    cpu = fn label ->
      [_, value] = Regex.run(~r/#{label}\s+cpu\s+([\d.]+)/, out)
      String.to_float(value)
    end

    %{direct: cpu.("direct"), hop: cpu.("one hop")}
  end

  # -- printing --------------------------------------------------------------

  defp unary_lines(size, c, results) do
    pair_ops = results.pair.ops

    for {variant, label} <- [pair: "grpcio pair", grpc: "snakepit grpc", lane: "snakepit lane"] do
      r = results[variant]

      String.pad_trailing(label, 14) <>
        pad(size, 5) <>
        pad(c, 5) <>
        pad(round(r.ops), 10) <>
        pad(fmt(r.p50_us, 0), 9) <>
        pad(fmt(r.p99_us, 0), 9) <>
        pad(fmt(r.client_cpu_us), 15) <>
        pad(fmt(r.server_cpu_us), 15) <> pad(fmt(r.ops / pair_ops, 2) <> "x", 9)
    end
  end

  defp stream_lines(size, results) do
    pair_rate = results.pair.msgs_per_s

    for {variant, label} <- [pair: "grpcio pair", grpc: "snakepit grpc", lane: "snakepit lane"] do
      r = results[variant]

      String.pad_trailing(label, 14) <>
        pad(size, 5) <>
        pad(round(r.msgs_per_s), 12) <>
        pad(fmt(r.client_cpu_us_per_msg, 2), 19) <>
        pad(fmt(r.server_cpu_us_per_msg, 2), 19) <>
        pad(fmt(r.msgs_per_s / pair_rate, 2) <> "x", 9)
    end
  end

  defp summary(unary, stream_rows, floor) do
    target = for {2, 8, results, _} <- unary, do: results
    one = for {2, 1, results, _} <- unary, do: results
    layers = for {:layers, l} <- unary, do: l
    streams = for {2, results} <- stream_rows, do: results

    [
      "",
      "targets (pool 2):"
    ] ++
      Enum.map(target, fn r ->
        "  calls/s at 8 callers: lane #{fmt(r.lane.ops / r.pair.ops, 2)}x the grpcio pair " <>
          "(target >= 3x); worker cpu #{fmt(r.lane.server_cpu_us)} us/call (target <= 100); " <>
          "BEAM cpu #{fmt(r.lane.client_cpu_us)} us/call = #{fmt(r.lane.client_cpu_us / floor.direct, 2)}x " <>
          "the wake-up floor (target <= 2x)"
      end) ++
      Enum.map(layers, fn l ->
        of = fn us -> "#{fmt(us)} us (#{fmt(us / floor.direct, 2)}x)" end

        "  where the BEAM's cpu per call goes (8 callers unless said): the BEAM's own round " <>
          "trip #{fmt(floor.beam)} us (#{fmt(floor.beam / floor.direct, 2)}x the floor); the " <>
          "lane's native call alone, one caller per worker #{of.(l.native)}; callers handing " <>
          "lanes to each other, no pool process #{of.(l.handoff)}, with the API's per-call " <>
          "work #{of.(l.handoff_api)}; leased from a minimal pool process #{of.(l.minimal)}; " <>
          "leased from Snakepit's pool process #{of.(l.pooled)}; all of Snakepit.execute in " <>
          "the same rotation #{of.(l.execute)} = #{fmt(l.execute / l.pooled, 2)}x the leased " <>
          "call (target <= 1.25x)"
      end) ++
      Enum.map(streams, fn r ->
        "  stream msgs/s: lane #{fmt(r.lane.msgs_per_s / r.pair.msgs_per_s, 2)}x the grpcio pair (target >= 3x)"
      end) ++
      Enum.map(one, fn r ->
        "  p50 at 1 caller: lane #{fmt(r.lane.p50_us, 0)} us, grpcio pair #{fmt(r.pair.p50_us, 0)} us " <>
          "(target: below the pair)"
      end)
  end

  defp pad(value, width), do: String.pad_leading(to_string(value), width)

  defp fmt(value, decimals \\ 1), do: :erlang.float_to_binary(value / 1, decimals: decimals)

  defp us(native), do: System.convert_time_unit(native, :native, :nanosecond) / 1_000
  defp seconds(native), do: System.convert_time_unit(native, :native, :microsecond) / 1_000_000
end

Bench.CallTransport.run()
