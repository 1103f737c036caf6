defmodule Snakepit.PythonRuntime do
  @moduledoc """
  Which Python runs the workers, and the environment it runs with.

  The interpreter is, in order: `config :snakepit, python_executable: path`,
  the `SNAKEPIT_PYTHON` environment variable, the uv-managed runtime when
  `config :snakepit, :python, strategy: :uv` (a virtualenv at `runtime_dir`,
  default `.venv`), the virtualenv `.venv/` in the current directory (what
  `mix snakepit.setup` creates), then `python3` on the `PATH`.

      config :snakepit, :python,
        strategy: :uv,            # :pip (default) or :uv
        managed: true,            # uv provides the interpreter itself
        python_version: "3.12",   # which one (managed only)
        runtime_dir: ".venv"      # where the environment lives

  `runtime_identity/0` names the interpreter (path, version, platform) for
  cache keys; `runtime_metadata/0` describes it.

  `PYTHONPATH` gets the bridge package shipped in Snakepit's `priv/python`,
  then the `priv/python` directory of every loaded application that has one
  (so a host app's `priv/python/my_adapter.py` is importable as
  `my_adapter`), then `config :snakepit, python_path: [...]`, then whatever
  `PYTHONPATH` already held.
  """

  # The virtualenvs `mix snakepit.setup` makes where this is compiled: the
  # project's (a host app's, when Snakepit is its dependency) and Snakepit's
  # own. Absolute and fixed at compile time, so a release copied or moved
  # away from its build tree, and started from any directory, still runs
  # the interpreter it was built with.
  @built_venvs (if Code.ensure_loaded?(Mix.Project) do
                  build = Mix.Project.build_path()

                  project =
                    if Path.basename(Path.dirname(build)) == "_build",
                      do: Path.dirname(Path.dirname(build))

                  [project, File.cwd!()]
                  |> Enum.reject(&is_nil/1)
                  |> Enum.map(&Path.join([&1, ".venv", "bin", "python"]))
                  |> Enum.uniq()
                else
                  []
                end)

  @doc "Absolute path of the Python interpreter, or an error saying what was tried."
  @spec executable() :: {:ok, String.t()} | {:error, String.t()}
  def executable do
    # Looked at in order and only as far as needed: every worker start asks.
    candidates = [
      {"config :snakepit, python_executable", &Snakepit.Defaults.python_executable/0},
      {"SNAKEPIT_PYTHON", fn -> System.get_env("SNAKEPIT_PYTHON") end},
      {"the uv runtime (config :snakepit, :python, strategy: :uv)", &uv_runtime_python/0},
      {".venv in #{File.cwd!()}", &venv_python/0},
      {"the .venv of the project this was built in (#{Enum.join(@built_venvs, ", ")})",
       &built_venv_python/0},
      {"python3 on PATH", fn -> System.find_executable("python3") end}
    ]

    Enum.find_value(candidates, fn {_what, lookup} ->
      if path = lookup.(), do: resolve(path)
    end) ||
      {:error,
       "no Python interpreter found (tried #{Enum.map_join(candidates, ", ", &elem(&1, 0))}); " <>
         "run `mix snakepit.setup` or set config :snakepit, python_executable: \"/path/to/python3\""}
  end

  defp uv_runtime_python do
    config = config()

    if config.strategy == :uv do
      path = Path.join([Path.expand(config.runtime_dir), "bin", "python"])
      if File.exists?(path), do: path
    end
  end

  @defaults %{strategy: :pip, managed: false, python_version: nil, runtime_dir: ".venv"}

  @doc """
  The `config :snakepit, :python` settings with their defaults:
  `%{strategy: :pip | :uv, managed: boolean, python_version: String.t() |
  nil, runtime_dir: String.t()}`.
  """
  @spec config() :: map()
  def config do
    Map.merge(@defaults, Map.new(Snakepit.Defaults.python()))
  end

  @doc "The interpreter's absolute path, or nil when none is usable (see `missing_reason/1`)."
  @spec executable_path() :: String.t() | nil
  def executable_path do
    case executable() do
      {:ok, path} -> path
      {:error, _} -> nil
    end
  end

  @doc "Same as `executable/0`: `{:ok, path}` or `{:error, reason}`."
  @spec resolve_executable() :: {:ok, String.t()} | {:error, String.t()}
  def resolve_executable, do: executable()

  @doc "Whether uv provides the interpreter itself (`strategy: :uv, managed: true`)."
  @spec managed?(map()) :: boolean()
  def managed?(config \\ config()), do: config.strategy == :uv and config.managed == true

  @doc "Why no interpreter is usable, or nil when one is."
  @spec missing_reason(map()) :: String.t() | nil
  def missing_reason(config \\ config()) do
    case executable() do
      {:ok, _} ->
        nil

      {:error, reason} ->
        if managed?(config),
          do:
            reason <> "; the managed runtime is made by `mix snakepit.setup` (uv python install)",
          else: reason
    end
  end

  @doc """
  Makes the uv runtime at `runtime_dir` with `runner` (a
  `Snakepit.Bootstrap.Runner`): `uv python install <version>` when managed,
  then `uv venv`. `{:error, reason}` in one line when uv cannot (offline,
  unknown version), naming the fallback.
  """
  @spec install_managed(module(), keyword()) :: :ok | {:error, String.t()}
  def install_managed(runner, opts \\ []) do
    config = Map.merge(config(), Map.new(opts))
    uv = Keyword.get(opts, :uv) || System.find_executable("uv")
    dir = Path.expand(config.runtime_dir)
    version = config.python_version

    cond do
      uv == nil ->
        {:error, "uv is not installed; falling back to python3 -m venv"}

      managed?(config) and version == nil ->
        {:error, "config :snakepit, :python, managed: true needs python_version"}

      true ->
        steps =
          if(managed?(config), do: [["python", "install", version]], else: []) ++
            [
              ["venv", "--seed", "--allow-existing", dir] ++
                if(version, do: ["--python", version], else: [])
            ]

        Enum.reduce_while(steps, :ok, fn args, :ok ->
          case runner.cmd(uv, args, []) do
            :ok ->
              {:cont, :ok}

            {:error, reason} ->
              {:halt,
               {:error,
                "uv #{Enum.join(args, " ")} failed (#{one_line(reason)}); falling back to python3 -m venv"}}
          end
        end)
    end
  end

  defp one_line(reason) when is_binary(reason),
    do: reason |> String.split("\n", trim: true) |> List.last() || ""

  defp one_line(reason), do: inspect(reason)

  @doc "The Python settings every worker gets (`PYTHONPATH` and the like), without the VM's own environment."
  @spec runtime_env() :: %{String.t() => String.t()}
  def runtime_env do
    %{
      "PYTHONPATH" => Enum.join(python_path(), ":"),
      "PYTHONUNBUFFERED" => "1",
      "PYTHONDONTWRITEBYTECODE" => "1"
    }
  end

  @doc """
  A string naming the interpreter, e.g. `"cpython-3.11.7-linux-x86_64:/app/.venv/bin/python"`:
  the same for the same interpreter across calls and restarts, different
  when the path, version or platform changes. For cache keys.
  `{:error, reason}` when there is no interpreter.
  """
  @spec runtime_identity() :: {:ok, String.t()} | {:error, String.t()}
  def runtime_identity do
    with {:ok, path} <- executable(), do: identity(path)
  end

  @doc false
  # The identity of the interpreter at `path` (see runtime_identity/0).
  @spec identity(String.t()) :: {:ok, String.t()} | {:error, String.t()}
  def identity(path) do
    with {:ok, facts} <- interpreter_facts(path) do
      {:ok, "#{facts.implementation}-#{facts.version}-#{facts.platform}:#{path}"}
    end
  end

  @doc """
  `{:ok, %{executable, version, implementation, platform, strategy,
  managed}}` for the interpreter (asked once per path and cached), or
  `{:error, reason}`.
  """
  @spec runtime_metadata() :: {:ok, map()} | {:error, String.t()}
  def runtime_metadata do
    config = config()

    with {:ok, path} <- executable(),
         {:ok, facts} <- interpreter_facts(path) do
      {:ok,
       Map.merge(facts, %{executable: path, strategy: config.strategy, managed: managed?(config)})}
    end
  end

  defp interpreter_facts(path) do
    # Asked again when the file changes (an environment made anew).
    key =
      case File.stat(path, time: :posix) do
        {:ok, stat} -> {__MODULE__, :facts, path, stat.mtime, stat.inode}
        {:error, _} -> {__MODULE__, :facts, path}
      end

    case :persistent_term.get(key, nil) do
      nil ->
        code =
          "import platform, sys; print(sys.implementation.name, platform.python_version(), " <>
            "sys.platform + '-' + platform.machine())"

        case System.cmd(path, ["-c", code], stderr_to_stdout: true) do
          {out, 0} ->
            [impl, version, plat] =
              out |> String.split("\n", trim: true) |> List.last() |> String.split(" ")

            facts = %{implementation: impl, version: version, platform: plat}
            :persistent_term.put(key, facts)
            {:ok, facts}

          {out, status} ->
            {:error, "#{path} -c failed with status #{status}: #{String.trim(out)}"}
        end

      facts ->
        {:ok, facts}
    end
  end

  defp built_venv_python, do: Enum.find(@built_venvs, &File.exists?/1)

  defp venv_python do
    path = Path.join([File.cwd!(), ".venv", "bin", "python"])
    if File.exists?(path), do: path
  end

  defp resolve(path) do
    found =
      if String.contains?(path, "/"), do: Path.expand(path), else: System.find_executable(path)

    cond do
      found == nil -> {:error, "Python interpreter #{inspect(path)} not found on PATH"}
      File.regular?(found) -> {:ok, found}
      true -> {:error, "Python interpreter #{found} does not exist"}
    end
  end

  @doc "Directories put on the workers' `PYTHONPATH`, in order."
  @spec python_path() :: [String.t()]
  def python_path do
    own = Path.join(:code.priv_dir(:snakepit), "python")

    apps =
      for {app, _, _} <- Application.loaded_applications(),
          app != :snakepit,
          dir = app_python_dir(app),
          do: dir

    configured = Snakepit.Defaults.python_path()
    existing = System.get_env("PYTHONPATH", "") |> String.split(":", trim: true)
    Enum.uniq([own | apps] ++ configured ++ existing)
  end

  @doc """
  The directories of Python code of the applications and of
  `config :snakepit, python_path: [...]`: `python_path/0` without
  Snakepit's own bridge and the VM's `PYTHONPATH` (what `reload: true`
  watches).
  """
  @spec adapter_paths() :: [String.t()]
  def adapter_paths do
    apps =
      for {app, _, _} <- Application.loaded_applications(),
          app != :snakepit,
          dir = app_python_dir(app),
          do: dir

    Enum.uniq(apps ++ Snakepit.Defaults.python_path())
  end

  defp app_python_dir(app) do
    case :code.priv_dir(app) do
      {:error, _} -> nil
      priv -> if File.dir?(dir = Path.join(priv, "python")), do: dir
    end
  end

  @doc "The full environment of a worker: the VM's, plus Python settings, plus `extra`."
  @spec worker_env([{String.t(), String.t()}]) :: [{String.t(), String.t()}]
  def worker_env(extra \\ []) do
    System.get_env()
    |> Map.merge(runtime_env())
    |> Map.merge(Snakepit.ZeroCopy.Settings.worker_env())
    |> Map.merge(Map.new(extra))
    |> Enum.to_list()
  end
end
