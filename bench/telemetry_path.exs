# The CPU cost of the telemetry path per trivial call (`ping`, pool of 1,
# one caller), in one run, modes alternating round by round:
#
#   * none    - no handler attached anywhere: workers are told not to send
#               Python events, Elixir events find no handler;
#   * handler - one handler attached to every Python event and to the
#               Elixir call events: workers build and send 4 events per
#               call, GrpcStream folds them in and runs the handler.
#
# CPU is read from /proc/<pid>/task/*/schedstat (Bench.CPU, in ns, every
# thread of the BEAM and of the worker), with snapshots taken while both are
# idle (before and after each round of calls); utime + stime, which this
# script used to read, count in 10 ms ticks. The "nothing listens" share is measured directly
# too: the per-call work that stays when nobody listens (Python: the six
# no-op emit/span checks of a call; Elixir: the correlation id and three
# emits without handlers), timed in tight loops, over a trivial call's CPU.
#
#     ERL_FLAGS="+sbwt none +sbwtdcpu none +sbwtdio none" MIX_ENV=prod mix run bench/telemetry_path.exs
#
# Prints the figures and writes them to bench/results/telemetry_path.txt.

Code.require_file("support/args.exs", __DIR__)
Code.require_file("support/cpu.exs", __DIR__)

defmodule Bench.TelemetryPath do
  import Bench.Args, only: [env_ints: 2, median: 1]

  alias Bench.CPU
  alias Snakepit.Telemetry

  @calls 3_000

  def run do
    rounds = env_ints("BENCH_ROUNDS", [5]) |> hd()
    start_pool()
    worker = worker_os_pid()
    for _ <- 1..300, do: {:ok, _} = Snakepit.execute("ping", %{})
    empty = CPU.empty_window_ns([worker])

    samples =
      for _ <- 1..rounds, mode <- [:none, :handler] do
        {mode, measure(mode, worker)}
      end

    per_mode = fn mode, key ->
      samples
      |> Enum.filter(&(elem(&1, 0) == mode))
      |> Enum.map(&Map.fetch!(elem(&1, 1), key))
      |> median()
    end

    none_total = per_mode.(:none, :beam) + per_mode.(:none, :python)
    handler_total = per_mode.(:handler, :beam) + per_mode.(:handler, :python)
    python_idle = python_idle_cost_us()
    elixir_idle = elixir_idle_cost_us()
    idle = python_idle + elixir_idle

    lines = [
      "telemetry_path  #{DateTime.utc_now() |> DateTime.truncate(:second)}  rounds=#{rounds}  " <>
        "calls/round=#{@calls}  cores=#{System.schedulers_online()}  mix_env=#{Mix.env()}",
      CPU.precision(empty),
      "CPU per trivial call (us, median)      BEAM     Python   total    wall",
      row("no handler attached", per_mode, :none),
      row("one handler on every event", per_mode, :handler),
      "a handler costs #{fmt(handler_total - none_total)} us CPU per call " <>
        "(#{fmt(100 * (handler_total - none_total) / none_total)}% of a call; 4 Python events + 3 Elixir events)",
      "left when nothing listens: Python #{fmt(python_idle)} us + Elixir #{fmt(elixir_idle)} us " <>
        "= #{fmt(idle)} us = #{fmt(100 * idle / none_total)}% of a trivial call (target < 5%)"
    ]

    Enum.each(lines, &IO.puts/1)
    File.mkdir_p!("bench/results")
    File.write!("bench/results/telemetry_path.txt", Enum.join(lines, "\n") <> "\n")
  end

  defp row(label, per_mode, mode) do
    [beam, python, wall] = Enum.map([:beam, :python, :wall], &per_mode.(mode, &1))

    String.pad_trailing(label, 38) <>
      Enum.map_join([beam, python, beam + python, wall], "", &String.pad_trailing(fmt(&1), 9))
  end

  defp measure(mode, worker) do
    if mode == :handler do
      handler = fn _e, _m, _md, _ -> :ok end

      events =
        Telemetry.python_events() ++ Telemetry.grpc_events() ++ [[:snakepit, :request, :executed]]

      :ok = Telemetry.attach_many("bench-telemetry", events, handler, nil)
    end

    beam = CPU.beam_os_pid()
    # Snapshots with the pool idle: no call in flight before or after.
    {wall, delta} =
      CPU.measure([beam, worker], fn ->
        t0 = System.monotonic_time(:microsecond)
        for _ <- 1..@calls, do: {:ok, _} = Snakepit.execute("ping", %{})
        System.monotonic_time(:microsecond) - t0
      end)

    if mode == :handler, do: Telemetry.detach("bench-telemetry")
    # Both modes end with workers told the current state.
    Snakepit.Telemetry.GrpcStream.refresh()

    %{
      beam: delta.ns[beam] / 1000 / @calls,
      python: delta.ns[worker] / 1000 / @calls,
      wall: wall / @calls
    }
  end

  # The no-op checks a call makes in Python when nothing listens.
  defp python_idle_cost_us do
    {:ok, python} = Snakepit.PythonRuntime.executable()

    code = """
    import timeit
    from snakepit_bridge import telemetry
    from snakepit_bridge.telemetry import otel
    n = 200000
    emit = timeit.timeit(lambda: telemetry.emit(("call", "start"), {"system_time": 1}, {}), number=n) / n
    span = timeit.timeit(otel.available, number=n) / n
    # Four events per call (call and tool.execution, start and stop), one span check.
    print((4 * emit + span) * 1e6)
    """

    {out, 0} = System.cmd(python, ["-c", code], env: Snakepit.PythonRuntime.worker_env())
    out |> String.trim() |> String.to_float()
  end

  # The per-call telemetry work in Elixir when no handler is attached.
  defp elixir_idle_cost_us do
    n = 100_000

    {us, _} =
      :timer.tc(fn ->
        for _ <- 1..n do
          id = Snakepit.Telemetry.Correlation.new_id()

          Telemetry.emit([:snakepit, :grpc_worker, :execute, :start], %{system_time: 1}, %{
            correlation_id: id
          })

          Telemetry.emit([:snakepit, :grpc_worker, :execute, :stop], %{duration: 1}, %{
            correlation_id: id
          })

          Telemetry.emit([:snakepit, :request, :executed], %{duration: 1}, %{correlation_id: id})
        end
      end)

    us / n
  end

  defp worker_os_pid do
    [id] = Snakepit.Pool.Registry.list_workers()
    {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
    meta.os_pid
  end

  defp start_pool do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pools, [%{name: :default, pool_size: 1}])
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 60_000)
  end

  defp fmt(x), do: :erlang.float_to_binary(x / 1, decimals: 1)
end

Bench.TelemetryPath.run()
