defmodule Snakepit.Bootstrap do
  @moduledoc """
  Makes the Python environment Snakepit's workers run in, behind
  `mix snakepit.setup`:

    1. `mix deps.get` (unless `skip_mix_deps: true`);
    2. the environment at `runtime_dir` (`config :snakepit, :python`,
       default `.venv` in the project):
       * `strategy: :pip` (default) - `python3 -m venv`, then pip;
       * `strategy: :uv` - uv (installed from PyPI into
         `_build/snakepit_uv` when it is not on the `PATH`) makes the
         environment; with `managed: true, python_version: V` it first asks
         uv for that interpreter, and when it cannot be had (offline, unknown
         version) says so in one line and falls back to the system `python3`;
    3. the bridge's requirements (grpcio, protobuf, orjson), then
       `config :snakepit, :python_packages, requirements: [...]` and any
       `requirements:` files given, through `Snakepit.PythonPackages`;
    4. prints the interpreter the workers will use.

  Options: `:project_root` (default `File.cwd!/0`), `:runner` (a
  `Snakepit.Bootstrap.Runner`, for tests), `:skip_mix_deps`, `:python`
  (interpreter that makes the environment, default `python3`), `:venv`
  (overrides `runtime_dir`), `:requirements` (extra requirements files),
  `:strategy`, `:managed`, `:python_version` (override the config).
  Returns `:ok` or `{:error, reason}`.
  """

  alias Snakepit.{PythonPackages, PythonRuntime}

  @spec run(keyword()) :: :ok | {:error, term()}
  def run(opts \\ []) do
    runner = Keyword.get(opts, :runner, Snakepit.Bootstrap.Runner.System)
    root = Path.expand(Keyword.get(opts, :project_root, File.cwd!()))

    config =
      Map.merge(
        PythonRuntime.config(),
        Map.new(Keyword.take(opts, [:strategy, :managed, :python_version]))
      )

    venv = Path.expand(Keyword.get(opts, :venv, config.runtime_dir), root)
    base = Keyword.get(opts, :python) || System.find_executable("python3") || "python3"
    python = Path.join([venv, "bin", "python"])

    with :ok <- deps(runner, opts),
         {:ok, installer} <- environment(runner, config, base, venv, root),
         :ok <- packages(runner, installer, python, opts) do
      say(runner, "Snakepit's Python environment is ready: #{python}")
      :ok
    end
  end

  defp deps(runner, opts) do
    if opts[:skip_mix_deps], do: :ok, else: runner.mix("deps.get", [])
  end

  defp environment(runner, %{strategy: :uv} = config, base, venv, root) do
    with {:ok, uv} <- ensure_uv(runner, base, root) do
      case managed(runner, uv, config, venv) do
        :ok ->
          {:ok, {:uv, uv}}

        :fallback ->
          case runner.cmd(uv, ["venv", "--seed", "--allow-existing", "--python", base, venv], []) do
            :ok -> {:ok, {:uv, uv}}
            {:error, reason} -> {:error, "uv venv #{venv} failed: #{one_line(reason)}"}
          end
      end
    end
  end

  defp environment(runner, _config, base, venv, _root) do
    if File.exists?(Path.join([venv, "bin", "python"])) do
      {:ok, :pip}
    else
      say(runner, "Creating virtualenv #{venv} with #{base}")

      case runner.cmd(base, ["-m", "venv", venv], []) do
        :ok -> {:ok, :pip}
        {:error, reason} -> {:error, "#{base} -m venv #{venv} failed: #{one_line(reason)}"}
      end
    end
  end

  # The interpreter from uv itself, when managed; :fallback to base otherwise.
  defp managed(runner, uv, config, venv) do
    if PythonRuntime.managed?(config) do
      opts = [
        uv: uv,
        strategy: :uv,
        managed: true,
        python_version: config.python_version,
        runtime_dir: venv
      ]

      case PythonRuntime.install_managed(runner, opts) do
        :ok ->
          :ok

        {:error, reason} ->
          say(runner, "uv could not provide Python #{config.python_version}: #{reason}")
          :fallback
      end
    else
      :fallback
    end
  end

  # uv on the PATH, else from PyPI into a virtualenv of its own.
  defp ensure_uv(runner, base, root) do
    tools = Path.join([root, "_build", "snakepit_uv"])
    local = Path.join([tools, "bin", "uv"])

    cond do
      uv = System.find_executable("uv") ->
        {:ok, uv}

      File.exists?(local) ->
        {:ok, local}

      true ->
        say(runner, "Installing uv from PyPI into #{tools}")

        with :ok <- runner.cmd(base, ["-m", "venv", tools], []),
             :ok <-
               runner.cmd(
                 Path.join([tools, "bin", "python"]),
                 ["-m", "pip", "install", "--quiet", "uv"],
                 []
               ) do
          {:ok, local}
        else
          {:error, reason} -> {:error, "cannot install uv: #{one_line(reason)}"}
        end
    end
  end

  defp packages(runner, installer, python, opts) do
    files = [bridge_requirements() | List.wrap(opts[:requirements])]

    configured =
      Keyword.get(Snakepit.Defaults.python_packages(), :requirements, [])

    installer_opts = [python: python, quiet: true] ++ installer_opt(installer)

    Enum.each(files, &say(runner, "Installing #{&1}"))
    Enum.each(files, &PythonPackages.ensure!({:file, &1}, installer_opts))
    if configured != [], do: PythonPackages.ensure!({:list, configured}, installer_opts)
    :ok
  rescue
    e in Snakepit.PackageError -> {:error, Exception.message(e)}
  end

  # The uv that made the environment installs into it.
  defp installer_opt({:uv, uv}), do: [installer: :uv, uv: uv]

  defp installer_opt(:pip), do: [installer: :pip]

  defp bridge_requirements, do: Path.join(:code.priv_dir(:snakepit), "python/requirements.txt")

  defp say(runner, line) do
    if runner == Snakepit.Bootstrap.Runner.System, do: IO.puts(line)
    true
  end

  defp one_line(reason) when is_binary(reason),
    do: reason |> String.split("\n", trim: true) |> List.last() || ""

  defp one_line(reason), do: inspect(reason)
end
