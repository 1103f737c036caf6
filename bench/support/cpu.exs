# CPU time of OS processes, in nanoseconds, for the benchmarks in bench/.
#
#     Code.require_file("support/cpu.exs", Path.dirname(__ENV__.file))
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
#   processes are idle (calls finished, callers waiting), so that only the
#   reading thread is running; `precision/0` says what that leaves;
# * a thread that exits between two snapshots takes its CPU with it: the
#   diff cannot see it and counts it in `lost_threads`. Snapshot while the
#   processes are alive and their threads are started (after warm-up);
# * a thread started inside the window is counted whole (it began there).
#
# Reading the files costs the BEAM CPU inside the window (its reads of the
# last snapshot and the first): `empty_window_ns/1` measures it (a snapshot
# straight after a snapshot) so a benchmark can print it beside its figures.
# The files stay open between snapshots, in the process that takes them.

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
  def snapshot(os_pids), do: Map.new(os_pids, &{&1, threads(&1)})

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

  @doc """
  Closes the schedstat files kept open for `os_pids` (they stay open between
  snapshots so that a snapshot is cheap); for processes that will not be
  measured again.
  """
  @spec close([pos_integer()]) :: :ok
  def close(os_pids) do
    pids = MapSet.new(os_pids)

    for {{__MODULE__, pid, _} = key, fd} <- Process.get(), MapSet.member?(pids, pid) do
      Process.delete(key)
      :file.close(fd)
    end

    :ok
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

  # Each thread's schedstat file stays open (a raw file, so in the process
  # that takes the snapshots): opening a /proc file costs the BEAM about 100 us
  # here, a pread of an open one about 15 us. The task list is read on every
  # snapshot so that threads started since are seen.
  defp threads(os_pid) do
    case :prim_file.list_dir(~c"/proc/#{os_pid}/task") do
      {:ok, tids} ->
        for tid <- tids,
            tid = List.to_integer(tid),
            ns = thread_ns(os_pid, tid),
            into: %{},
            do: {tid, ns}

      {:error, _} ->
        %{}
    end
  end

  # nil for a thread that ended between the listing and the read. A cached
  # file that fails (its thread ended, a new one got its id) is reopened once.
  defp thread_ns(os_pid, tid) do
    key = {__MODULE__, os_pid, tid}

    case read(Process.get(key)) do
      nil ->
        if fd = Process.delete(key), do: :file.close(fd)
        read(open(key))

      ns ->
        ns
    end
  end

  defp read(nil), do: nil

  defp read(fd) do
    case :file.pread(fd, 0, 128) do
      {:ok, line} -> line |> :binary.split(" ") |> hd() |> String.to_integer()
      _ -> nil
    end
  end

  defp open({_, os_pid, tid} = key) do
    case :file.open("/proc/#{os_pid}/task/#{tid}/schedstat", [:read, :raw, :binary]) do
      {:ok, fd} ->
        Process.put(key, fd)
        fd

      {:error, _} ->
        nil
    end
  end
end
