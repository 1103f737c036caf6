defmodule Snakepit.Pool.ProcessRegistry do
  @moduledoc """
  Durable record of every worker OS process, so that none outlives a crash.

  A worker is *reserved* before its process is spawned and *activated*
  with the OS pid right after, both written to this VM's DETS file and
  synced at once: a VM that dies between spawn and registration still
  leaves a record with its run id. Files live under `instance_dir/0`, one
  directory per instance (`instance_name` / `instance_token`), so instances
  never see each other's records, and one file per VM run, so no two live
  VMs ever share a DETS file. Writes that arrive together share one sync,
  so a pool starting 100 workers pays a few syncs, not 200.

  At start, the files of earlier runs are read: each recorded process that
  is still alive *and* still carries that run's `--snakepit-run-id` on its
  command line is killed with its group, and so is anything else in the
  process table with that run id; then the file is removed. A file whose VM
  is still alive (a live node of the same instance) is left alone. Every
  write is synced, which also saves the file as closed, so a VM killed with
  -9 leaves a file that opens without repair; one killed in the middle of a
  write leaves one that DETS would have to repair: it is not read, its run's
  processes are found by the run id in its name (an info log line says so).
  A corrupt or unreadable file is logged and moved aside; boot continues.
  """
  use GenServer

  require Logger

  alias Snakepit.{Config, ProcessKiller, RunID, RuntimeCleanup}

  @table :snakepit_process_registry
  # Name under which an earlier run's file is opened, read and closed.
  @old_table :snakepit_process_registry_earlier_run

  # -- API -------------------------------------------------------------------

  @doc false
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "Records that `worker_id` is about to spawn its process."
  @spec reserve_worker(String.t()) :: :ok
  def reserve_worker(worker_id), do: call({:reserve, worker_id})

  @doc "Records the spawned process of a reserved worker."
  @spec activate_worker(String.t(), pid(), integer(), String.t(), keyword()) :: :ok
  def activate_worker(worker_id, elixir_pid, process_pid, fingerprint, opts \\ []) do
    call(
      {:activate, worker_id, elixir_pid, process_pid, fingerprint,
       Keyword.get(opts, :pgid, process_pid)}
    )
  end

  @doc "Records the process group of a worker, if its pid is still `process_pid`."
  @spec update_process_group(String.t(), integer(), integer()) :: :ok
  def update_process_group(worker_id, process_pid, pgid),
    do: call({:update_pgid, worker_id, process_pid, pgid})

  @doc "Forgets a worker. `:ok` also when it was not registered."
  @spec unregister_worker(String.t()) :: :ok
  def unregister_worker(worker_id), do: call({:unregister, worker_id})

  @doc "The record of `worker_id`."
  @spec get_worker_info(String.t()) :: {:ok, map()} | {:error, :not_found}
  def get_worker_info(worker_id) do
    case :dets.lookup(@table, worker_id) do
      [{^worker_id, info}] -> {:ok, info}
      _ -> {:error, :not_found}
    end
  catch
    :error, :badarg -> {:error, :not_found}
  end

  @doc "Is `worker_id` registered?"
  @spec worker_registered?(String.t()) :: boolean()
  def worker_registered?(worker_id), do: match?({:ok, _}, get_worker_info(worker_id))

  @doc "Every record, as `{worker_id, info}`."
  @spec list_all_workers() :: [{String.t(), map()}]
  def list_all_workers do
    :dets.foldl(fn entry, acc -> [entry | acc] end, [], @table)
  catch
    :error, :badarg -> []
  end

  @doc "Records of this VM's run."
  @spec current_run_entries() :: [{String.t(), map()}]
  def current_run_entries do
    run = RunID.current()
    Enum.filter(list_all_workers(), fn {_, info} -> info.beam_run_id == run end)
  end

  @doc "OS pids of activated workers of this run."
  @spec get_active_process_pids() :: [integer()]
  def get_active_process_pids do
    for {_, %{status: :active, process_pid: pid}} <- current_run_entries(), do: pid
  end

  @doc "Every recorded OS pid, whatever the record's status or run."
  @spec get_all_process_pids() :: [integer()]
  def get_all_process_pids,
    do: for({_, %{process_pid: pid}} <- list_all_workers(), pid != nil, do: pid)

  @doc "Workers with the given fingerprint."
  @spec get_workers_by_fingerprint(String.t()) :: [{String.t(), map()}]
  def get_workers_by_fingerprint(fingerprint) do
    Enum.filter(list_all_workers(), fn {_, info} -> info[:fingerprint] == fingerprint end)
  end

  @doc "The run id of this VM."
  @spec get_beam_run_id() :: String.t()
  def get_beam_run_id, do: RunID.current()

  @doc "Number of records in the DETS file."
  @spec dets_table_size() :: non_neg_integer()
  def dets_table_size, do: length(list_all_workers())

  @doc "Counts of records by status and run."
  @spec get_stats() :: map()
  def get_stats do
    entries = list_all_workers()
    run = RunID.current()

    %{
      total: length(entries),
      current_run: Enum.count(entries, fn {_, i} -> i.beam_run_id == run end),
      active: Enum.count(entries, fn {_, i} -> i.status == :active end),
      reserved: Enum.count(entries, fn {_, i} -> i.status == :reserved end),
      path: GenServer.call(__MODULE__, :path)
    }
  end

  @doc "Records of this run whose process is gone."
  @spec validate_workers() :: [{String.t(), map()}]
  def validate_workers do
    Enum.filter(current_run_entries(), fn {_, info} ->
      info.status == :active and not ProcessKiller.process_alive?(info.process_pid)
    end)
  end

  @doc "Drops the records of this run whose process is gone."
  @spec cleanup_dead_workers() :: non_neg_integer()
  def cleanup_dead_workers do
    dead = validate_workers()
    Enum.each(dead, fn {id, _} -> unregister_worker(id) end)
    length(dead)
  end

  @doc "Runs the boot-time orphan cleanup again. Returns the pids it found."
  @spec manual_orphan_cleanup() :: [integer()]
  def manual_orphan_cleanup, do: GenServer.call(__MODULE__, :cleanup_orphans, 30_000)

  @doc "Every record, printed. For debugging."
  @spec debug_show_all_entries() :: :ok
  def debug_show_all_entries do
    Enum.each(list_all_workers(), &IO.inspect/1)
  end

  defp call(msg), do: GenServer.call(__MODULE__, msg, 10_000)

  # -- server ----------------------------------------------------------------

  @impl true
  def init(opts) do
    dir = Keyword.get_lazy(opts, :dir, &instance_dir/0)
    File.mkdir_p!(dir)
    path = Path.join(dir, "#{RunID.current()}-#{System.pid()}.dets")
    found = cleanup_orphans(dir, path)

    if found != [],
      do:
        Logger.warning(
          "Snakepit killed #{length(found)} orphaned worker process(es) of earlier runs: #{inspect(found)}"
        )

    {:ok, @table} = :dets.open_file(@table, file: String.to_charlist(path), type: :set)
    # A new DETS file counts as "not properly closed" until its first save:
    # saved now, a VM killed before its first write leaves a file the next
    # boot reads without repair (each write is synced, and saved, at once).
    :ok = :dets.sync(@table)
    {:ok, %{path: path, dir: dir, unsynced: []}}
  end

  @doc """
  The directory of this instance's registry files, one file per VM run:
  `<data_dir>/process_registry[-<instance_name>][-<instance_token>]/`.
  """
  @spec instance_dir() :: String.t()
  def instance_dir do
    suffix =
      [Config.instance_name_identifier(), Config.instance_token_identifier()]
      |> Enum.reject(&is_nil/1)
      |> Enum.map_join(&("-" <> &1))

    Path.join(Config.data_dir(), "process_registry#{suffix}")
  end

  # Every VM writes only its own file, so two live VMs of one instance
  # never share a DETS file. At boot, the files of VMs that are gone are
  # read, what they recorded is killed, and the files are removed.
  defp cleanup_orphans(dir, own_path) do
    dir
    |> Path.join("*.dets")
    |> Path.wildcard()
    |> Enum.reject(&(&1 == own_path))
    |> Enum.flat_map(&cleanup_file/1)
  end

  defp cleanup_file(path) do
    if file_owner_alive?(path), do: [], else: cleanup_dead_file(path)
  end

  # Files are named <run_id>-<os_pid>.dets: a live VM's file is never
  # opened by another VM (DETS files are single-owner).
  defp file_owner_alive?(path) do
    case Regex.run(~r/-(\d+)\.dets$/, Path.basename(path)) do
      [_, pid] -> beam_alive?(String.to_integer(pid))
      nil -> false
    end
  end

  defp cleanup_dead_file(path) do
    case read_file(path) do
      {:ok, entries} ->
        if Enum.any?(entries, fn {_, info} -> beam_alive?(info[:beam_os_pid]) end) do
          []
        else
          found = kill_recorded(entries, [])
          File.rm(path)
          found
        end

      {:error, :needs_repair} ->
        # Its VM was killed in the middle of a write. Not repaired (DETS
        # would print its repair to the console as if something were
        # wrong): every process of that run carries the run id in the file
        # name, and the process table scan finds them by it.
        Logger.info(
          "Snakepit process registry file #{path} was not saved as closed (its VM was killed " <>
            "during a write); its run's processes are found by run id instead"
        )

        found = kill_recorded([], file_run_ids(path))
        File.rm(path)
        found

      {:error, reason} ->
        aside = "#{path}.corrupt-#{System.os_time(:second)}"

        Logger.error(
          "Snakepit process registry file #{path} is unreadable (#{inspect(reason)}); moved to #{aside}"
        )

        File.rename(path, aside)
        []
    end
  end

  defp read_file(path) do
    # A VM killed with -9 never closed its file, but every write was synced
    # (which saves the file as closed): only a kill in the middle of a
    # write leaves one that needs repair.
    case :dets.open_file(@old_table, file: String.to_charlist(path), type: :set, repair: false) do
      {:ok, table} ->
        entries = :dets.foldl(&[&1 | &2], [], table)
        :dets.close(table)
        {:ok, entries}

      {:error, {:needs_repair, _}} ->
        {:error, :needs_repair}

      {:error, reason} ->
        {:error, reason}
    end
  catch
    kind, reason -> {:error, {kind, reason}}
  end

  # The run id a registry file's name carries (<run_id>-<os_pid>.dets).
  defp file_run_ids(path) do
    case Regex.run(~r/\A([0-9a-z]{7})(?:-\d+)?\.dets\z/, Path.basename(path)) do
      [_, run] -> [run]
      nil -> []
    end
  end

  # Kills each recorded process still carrying its run id (pid reuse guard)
  # and anything else in the process table with one of those run ids (or
  # of `file_runs`, for a file whose records cannot be read).
  defp kill_recorded(entries, file_runs) do
    runs =
      entries |> Enum.map(fn {_, i} -> i.beam_run_id end) |> Enum.concat(file_runs) |> Enum.uniq()

    recorded =
      for {_, %{process_pid: pid} = info} <- entries,
          is_integer(pid),
          still_that_worker?(pid, info.beam_run_id),
          do: %{process_pid: pid, pgid: info[:pgid] || pid}

    scanned =
      for run <- runs,
          pid <- ProcessKiller.find_by_run_id(run, Config.instance_filters()),
          do: %{process_pid: pid, pgid: pid}

    targets = Enum.uniq_by(recorded ++ scanned, & &1.process_pid)
    RuntimeCleanup.run(targets, timeout_ms: 2_000)
    Enum.map(targets, & &1.process_pid)
  end

  # Guards against pid reuse: only a process still carrying the run id is ours.
  defp still_that_worker?(pid, run_id) do
    case ProcessKiller.get_process_command(pid) do
      {:ok, cmd} -> String.contains?(cmd, "--snakepit-run-id #{run_id}")
      _ -> false
    end
  end

  defp beam_alive?(pid) when is_integer(pid) do
    case ProcessKiller.get_process_command(pid) do
      {:ok, cmd} -> cmd =~ "beam"
      _ -> false
    end
  end

  defp beam_alive?(_), do: false

  @impl true
  def handle_call({:reserve, id}, from, state) do
    info = %{
      status: :reserved,
      beam_run_id: RunID.current(),
      beam_os_pid: String.to_integer(System.pid()),
      process_pid: nil,
      pgid: nil,
      elixir_pid: nil,
      fingerprint: nil,
      instance_name: Config.instance_name(),
      reserved_at: System.system_time(:millisecond)
    }

    {:noreply, commit(state, from, :insert, {id, info})}
  end

  def handle_call({:activate, id, elixir_pid, process_pid, fingerprint, pgid}, from, state) do
    base =
      case :dets.lookup(@table, id) do
        [{^id, info}] ->
          info

        _ ->
          %{
            beam_run_id: RunID.current(),
            beam_os_pid: String.to_integer(System.pid()),
            instance_name: Config.instance_name()
          }
      end

    info =
      Map.merge(base, %{
        status: :active,
        process_pid: process_pid,
        pgid: pgid,
        elixir_pid: elixir_pid,
        fingerprint: fingerprint,
        activated_at: System.system_time(:millisecond)
      })

    {:noreply, commit(state, from, :insert, {id, info})}
  end

  def handle_call({:update_pgid, id, process_pid, pgid}, from, state) do
    case :dets.lookup(@table, id) do
      [{^id, %{process_pid: ^process_pid} = info}] ->
        {:noreply, commit(state, from, :insert, {id, %{info | pgid: pgid}})}

      _ ->
        {:reply, :ok, state}
    end
  end

  def handle_call({:unregister, id}, from, state),
    do: {:noreply, commit(state, from, :delete, id)}

  def handle_call(:cleanup_orphans, _from, state),
    do: {:reply, cleanup_orphans(state.dir, state.path), state}

  def handle_call(:path, _from, state), do: {:reply, state.path, state}

  # Anything else is a sender's bug: answered, logged, the registry goes on.
  def handle_call(request, _from, state) do
    malformed(request)
    {:reply, {:error, :unknown_request}, state}
  end

  @impl true
  def handle_cast(message, state) do
    malformed(message)
    {:noreply, state}
  end

  @impl true
  def handle_info(:sync, state) do
    synced = :dets.sync(@table)

    Enum.each(state.unsynced, fn
      {from, :delete} -> GenServer.reply(from, :ok)
      {from, :insert} -> GenServer.reply(from, synced)
    end)

    {:noreply, %{state | unsynced: []}}
  end

  def handle_info(message, state) do
    malformed(message)
    {:noreply, state}
  end

  defp malformed(message),
    do: Snakepit.Logger.malformed(:lifecycle, "Snakepit.Pool.ProcessRegistry", message)

  # A write is answered once it is synced: its record must survive a kill -9
  # of the VM right after. Written now, synced by the :sync message queued
  # behind the writes already waiting in the mailbox, so that a burst of
  # writes (a pool starting its workers) shares one sync instead of paying
  # one each (a sync is an fsync: milliseconds, one at a time).
  defp commit(state, from, :insert, object),
    do: unsynced(state, {from, :insert}, :dets.insert(@table, object))

  # A forgotten worker is forgotten whatever DETS says (as before).
  defp commit(state, from, :delete, key) do
    _ = :dets.delete(@table, key)
    unsynced(state, {from, :delete}, :ok)
  end

  defp unsynced(state, waiting, :ok) do
    if state.unsynced == [], do: send(self(), :sync)
    %{state | unsynced: [waiting | state.unsynced]}
  end

  defp unsynced(state, {from, _}, error) do
    GenServer.reply(from, error)
    state
  end

  @impl true
  def terminate(_reason, state) do
    empty? = :dets.info(@table, :size) == 0
    :dets.close(@table)
    # A clean stop leaves nothing to recover: no file for the next boot.
    if empty?, do: File.rm(state.path)
  end
end
