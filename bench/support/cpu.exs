# CPU time of OS processes, in nanoseconds, for the benchmarks in bench/.
#
#     Code.require_file("support/cpu.exs", __DIR__)   # from a script in bench/
#
#     before = Bench.CPU.snapshot([Bench.CPU.beam_os_pid() | worker_os_pids])
#     ... the measured work ...
#     delta = Bench.CPU.diff(before, Bench.CPU.snapshot(same_pids))
#     delta.ns[os_pid]     # CPU ns of that process in the window
#     Bench.CPU.total(delta, pids)
#
# A process's CPU is the sum of the first field of
# /proc/<pid>/task/<tid>/schedstat (time on a CPU, ns) over its threads. What
# that is worth:
#
# * the unit is 1 ns, but a thread that is on a CPU while it is read is
#   counted only up to its last scheduler update (a tick, 1/CONFIG_HZ, or its
#   last switch): up to one tick behind. Take snapshots while the measured
#   processes are idle (calls finished, callers waiting), so that none of
#   their threads is on a CPU (in the BEAM, run without scheduler
#   busy-waiting: +sbwt none +sbwtdcpu none +sbwtdio none); `precision/1`
#   says what that leaves;
# * a thread that exits between two snapshots takes its CPU with it: the
#   diff cannot see it and counts it in `lost_threads`. Snapshot while the
#   processes are alive and their threads are started (after warm-up);
# * a thread started inside the window is counted whole (it began there).
#
# The files are read by a process of its own (bench/support/schedstat_reader.py,
# started with the first snapshot), so that reading them costs the BEAM only
# a message to it and its answer, inside the window: `empty_window_ns/1`
# measures that (a snapshot straight after a snapshot) so that a benchmark
# can print it beside its figures.

defmodule Bench.CPU do
  @typedoc "CPU ns per thread id, per OS process."
  @type snapshot :: %{pos_integer() => %{pos_integer() => non_neg_integer()}}

  @typedoc "CPU ns per OS process in a window, and threads seen exiting in it."
  @type delta :: %{ns: %{pos_integer() => non_neg_integer()}, lost_threads: non_neg_integer()}

  @doc "The BEAM's own OS process id."
  @spec beam_os_pid() :: pos_integer()
  def beam_os_pid, do: String.to_integer(System.pid())

  @doc "CPU ns of every thread of each OS process (a process that is gone has none)."
  @spec snapshot([pos_integer()]) :: snapshot()
  def snapshot(os_pids) do
    found = threads_of(os_pids)
    Map.new(os_pids, &{&1, Map.get(found, &1, %{})})
  end

  @doc """
  What each process spent between two snapshots, in ns. Threads present in
  `before` but gone in `later` are counted in `lost_threads`: their CPU
  since `before` is not in the figures.
  """
  @spec diff(snapshot(), snapshot()) :: delta()
  def diff(before, later) do
    {ns, lost} =
      Enum.map_reduce(later, 0, fn {pid, now}, lost ->
        was = Map.get(before, pid, %{})
        spent = Enum.sum(for {tid, t} <- now, do: t - Map.get(was, tid, 0))
        gone = Enum.count(Map.keys(was), &(not Map.has_key?(now, &1)))
        {{pid, spent}, lost + gone}
      end)

    %{ns: Map.new(ns), lost_threads: lost}
  end

  @doc "The summed ns of `os_pids` in a delta."
  @spec total(delta(), [pos_integer()]) :: non_neg_integer()
  def total(%{ns: ns}, os_pids), do: Enum.sum(Enum.map(os_pids, &Map.get(ns, &1, 0)))

  @doc """
  Runs `fun` between two snapshots of `os_pids`; returns `{fun's result,
  delta}`.
  """
  @spec measure([pos_integer()], (-> result)) :: {result, delta()} when result: var
  def measure(os_pids, fun) do
    before = snapshot(os_pids)
    result = fun.()
    {result, diff(before, snapshot(os_pids))}
  end

  @doc """
  The BEAM's CPU ns for an empty window (a snapshot of `os_pids` right after
  another), median of 11: the cost of measuring, not subtracted anywhere.
  """
  @spec empty_window_ns([pos_integer()]) :: non_neg_integer()
  def empty_window_ns(os_pids) do
    beam = beam_os_pid()
    pids = Enum.uniq([beam | os_pids])

    for(_ <- 1..11, do: diff(snapshot(pids), snapshot(pids)).ns[beam])
    |> Enum.sort()
    |> Enum.at(5)
  end

  @doc "The kernel's tick in ns (from /proc/config.gz), or nil where it cannot be read."
  @spec tick_ns() :: pos_integer() | nil
  def tick_ns do
    with {:ok, gz} <- File.read("/proc/config.gz"),
         [_, hz] <- Regex.run(~r/^CONFIG_HZ=(\d+)$/m, :zlib.gunzip(gz)) do
      div(1_000_000_000, String.to_integer(hz))
    else
      _ -> nil
    end
  end

  @doc "One line for a benchmark's header: where the figures come from and what they are worth."
  @spec precision(pos_integer() | nil) :: String.t()
  def precision(empty_ns \\ nil) do
    tick =
      case tick_ns() do
        nil -> "one scheduler tick (HZ unknown)"
        ns -> "one tick (#{Float.round(ns / 1_000_000, 1)} ms)"
      end

    empty = if empty_ns, do: "; an empty window costs the BEAM #{us(empty_ns)} us", else: ""

    "cpu: /proc/<pid>/task/*/schedstat, ns, all threads; a thread on a CPU when read lags " <>
      "up to #{tick}, so snapshots are taken with the measured processes idle#{empty}"
  end

  defp us(ns), do: Float.round(ns / 1000, 1)

  # The files are read by bench/support/schedstat_reader.py, one process
  # started on the first snapshot and kept (its port belongs to the process
  # that takes the snapshots): reading them from the BEAM costs it a dirty
  # I/O call per file, about 100 us each to open one here; asking the reader
  # costs it one write and one read.
  defp threads_of(os_pids) do
    port = reader()
    Port.command(port, Enum.join(os_pids, " ") <> "\n")

    port
    |> await_reply([])
    |> String.split()
    |> Enum.map(&String.to_integer/1)
    |> Enum.chunk_every(3)
    |> Enum.group_by(fn [pid, _, _] -> pid end, fn [_, tid, ns] -> {tid, ns} end)
    |> Map.new(fn {pid, threads} -> {pid, Map.new(threads)} end)
  end

  defp await_reply(port, acc) do
    receive do
      {^port, {:data, {:eol, chunk}}} -> IO.iodata_to_binary([acc, chunk])
      {^port, {:data, {:noeol, chunk}}} -> await_reply(port, [acc, chunk])
      {^port, {:exit_status, status}} -> raise "schedstat_reader.py exited with #{status}"
    end
  end

  defp reader do
    with nil <- Process.get(__MODULE__) do
      python = System.find_executable("python3") || raise "Bench.CPU needs python3 on the PATH"
      script = Path.join(__DIR__, "schedstat_reader.py")

      port =
        Port.open({:spawn_executable, python}, [
          :binary,
          :exit_status,
          {:line, 65_536},
          args: [script]
        ])

      Process.put(__MODULE__, port)
      port
    end
  end
end
