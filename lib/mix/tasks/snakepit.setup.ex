defmodule Mix.Tasks.Snakepit.Setup do
  @shortdoc "Creates the Python environment Snakepit's workers use"
  @moduledoc """
  Creates a virtualenv at `.venv/` in the current project (the place
  `Snakepit.PythonRuntime` looks first after explicit config) and installs
  the worker bridge's requirements into it (grpcio, protobuf, orjson).

      mix snakepit.setup
      mix snakepit.setup --python /usr/bin/python3.12 --venv /opt/myapp/venv
      mix snakepit.setup --requirements priv/python/requirements.txt

  Options:
    * `--python` - interpreter that creates the virtualenv (default: `python3`)
    * `--venv` - where to create it (default: `.venv`); set
      `config :snakepit, python_executable: "<venv>/bin/python"` when you change it
    * `--requirements` - an extra requirements file of your own (repeatable)

  Running it again only installs what is missing.
  """
  use Mix.Task

  @impl true
  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv, strict: [python: :string, venv: :string, requirements: :keep])

    venv = Path.expand(opts[:venv] || ".venv")

    python =
      opts[:python] || System.find_executable("python3") ||
        Mix.raise("python3 not found; pass --python PATH")

    venv_python = Path.join([venv, "bin", "python"])

    unless File.exists?(venv_python) do
      Mix.shell().info("Creating virtualenv #{venv} with #{python}")
      run!(python, ["-m", "venv", venv])
    end

    requirements = [bridge_requirements() | Keyword.get_values(opts, :requirements)]

    for req <- requirements do
      Mix.shell().info("Installing #{req}")

      run!(venv_python, [
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        req
      ])
    end

    Mix.shell().info("Snakepit's Python environment is ready: #{venv_python}")
    Mix.shell().info("Check it with: mix snakepit.doctor")
  end

  defp bridge_requirements do
    Mix.Task.run("compile", [])
    Path.join(:code.priv_dir(:snakepit), "python/requirements.txt")
  end

  defp run!(cmd, args) do
    case System.cmd(cmd, args, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} -> :ok
      {_, code} -> Mix.raise("#{cmd} #{Enum.join(args, " ")} failed with exit status #{code}")
    end
  end
end
