defmodule Snakepit.Pool.Reloader do
  @moduledoc """
  Development: restarts a pool when its Python code changes (`reload:
  true`, or `reload: [interval_ms: ms, paths: [dir, ...]]`).

  It watches the `.py` files under every application's `priv/python`, the
  directories of `config :snakepit, python_path: [...]` and the pool's own
  `paths:` (not Snakepit's bridge, nor the VM's `PYTHONPATH`). There is no
  file-watcher library to lean on, so it polls: every `interval_ms`
  (default 1000) it lists the files and compares their size, modification
  time and inode with the previous look. File times have a resolution of
  one second here, so files changed within the last interval and two
  seconds are told apart by a hash of their content too (an editor that
  saves twice in a second, or a test, is not missed). Directories named `__pycache__` or
  starting with a dot are skipped, symbolic links to directories are not
  followed, and at most 20,000 files are looked at.

  A change is acted on once a look finds nothing new (debounced by one
  interval): a save of many files, or a `git checkout`, makes one restart.
  The pool then restarts rolling (`Snakepit.Pool.Restart`), emitting
  `[:snakepit, :pool, :reload]` with `%{files: n}` and the first paths. A
  reload during a restart queues one more restart after it.

  The watcher runs beside its pool process, which monitors it (and
  restarts it should it fail); it stops with its pool.
  """
  use GenServer

  alias Snakepit.PythonRuntime

  @default_interval_ms 1_000
  @max_files 20_000

  @doc false
  # Starts the watcher of pool `config.name`, which reports to `pool`.
  @spec start(pid(), map()) :: GenServer.on_start()
  def start(pool, config) do
    opts = if is_list(config.reload), do: config.reload, else: []

    GenServer.start(__MODULE__, %{
      pool: pool,
      name: config.name,
      dirs: dirs(opts),
      interval: Keyword.get(opts, :interval_ms, @default_interval_ms)
    })
  end

  @doc "The directories a pool with `reload: opts` watches."
  @spec dirs(keyword()) :: [String.t()]
  def dirs(opts) do
    (PythonRuntime.adapter_paths() ++ Keyword.get(opts, :paths, []))
    |> Enum.map(&Path.expand/1)
    |> Enum.uniq()
  end

  @doc """
  A fingerprint of every watched file under `dirs`: path => {size, mtime,
  inode, content hash or nil}; the hash only of files changed within the
  last `recent_s` seconds.
  """
  @spec snapshot([String.t()], non_neg_integer()) :: %{String.t() => tuple()}
  def snapshot(dirs, recent_s \\ 3) do
    now = System.os_time(:second) - recent_s

    dirs
    |> Enum.reduce({%{}, 0}, fn dir, acc -> walk(dir, acc) end)
    |> elem(0)
    |> Map.new(fn {path, stat} -> {path, fingerprint(path, stat, now)} end)
  end

  @doc """
  The paths added, removed or changed from `old` to `new`. Content hashes
  count only where both looks have one.
  """
  @spec changes(map(), map()) :: [String.t()]
  def changes(old, new) do
    changed = for {path, print} <- new, not same?(Map.get(old, path), print), do: path
    removed = for {path, _} <- old, not Map.has_key?(new, path), do: path
    Enum.sort(changed ++ removed)
  end

  defp same?({size, mtime, inode, a}, {size, mtime, inode, b}),
    do: a == nil or b == nil or a == b

  defp same?(_old, _new), do: false

  defp walk(_dir, {_files, count} = acc) when count >= @max_files, do: acc

  defp walk(dir, acc) do
    case File.ls(dir) do
      {:ok, names} -> Enum.reduce(names, acc, &visit(Path.join(dir, &1), &1, &2))
      {:error, _} -> acc
    end
  end

  defp visit(_path, _name, {_files, count} = acc) when count >= @max_files, do: acc

  defp visit(path, name, {files, count} = acc) do
    case File.lstat(path, time: :posix) do
      {:ok, %File.Stat{type: :directory}} ->
        if name == "__pycache__" or String.starts_with?(name, "."), do: acc, else: walk(path, acc)

      {:ok, %File.Stat{type: type}} when type in [:regular, :symlink] ->
        with true <- String.ends_with?(name, ".py"),
             {:ok, %File.Stat{type: :regular} = stat} <- File.stat(path, time: :posix) do
          {Map.put(files, path, stat), count + 1}
        else
          _ -> acc
        end

      _ ->
        acc
    end
  end

  defp fingerprint(path, stat, recent_since) do
    hash =
      if stat.mtime >= recent_since do
        case File.read(path) do
          {:ok, content} -> :erlang.md5(content)
          {:error, _} -> nil
        end
      end

    {stat.size, stat.mtime, stat.inode, hash}
  end

  # -- server -------------------------------------------------------------------

  @impl true
  def init(args) do
    Process.monitor(args.pool)
    state = Map.merge(args, %{files: snapshot(args.dirs, recent(args)), pending: MapSet.new()})
    schedule(state)
    {:ok, state}
  end

  @impl true
  def handle_info(:poll, state) do
    files = snapshot(state.dirs, recent(state))

    state =
      case changes(state.files, files) do
        [] ->
          if MapSet.size(state.pending) > 0 do
            send(state.pool, {:reload, state.name, Enum.sort(state.pending)})
          end

          %{state | pending: MapSet.new()}

        changed ->
          %{state | pending: MapSet.union(state.pending, MapSet.new(changed))}
      end

    schedule(state)
    {:noreply, %{state | files: files}}
  end

  def handle_info({:DOWN, _ref, :process, pool, _reason}, %{pool: pool} = state),
    do: {:stop, :normal, state}

  def handle_info(_other, state), do: {:noreply, state}

  defp recent(state), do: div(state.interval, 1_000) + 2

  defp schedule(state), do: Process.send_after(self(), :poll, state.interval)
end
