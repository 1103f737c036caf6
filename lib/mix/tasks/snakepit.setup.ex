defmodule Mix.Tasks.Snakepit.Setup do
  @shortdoc "Creates the Python environment Snakepit's workers use"
  @moduledoc """
  Makes the Python environment the workers run in (`Snakepit.Bootstrap`):
  a virtualenv (`.venv/` by default, where `Snakepit.PythonRuntime` looks),
  the bridge's requirements (grpcio, protobuf, orjson), then
  `config :snakepit, :python_packages, requirements: [...]`.

      mix snakepit.setup
      mix snakepit.setup --python /usr/bin/python3.12 --venv /opt/myapp/venv
      mix snakepit.setup --requirements priv/python/requirements.txt

  With `config :snakepit, :python, strategy: :uv` uv makes the environment
  (uv itself comes from PyPI when it is not installed), and with `managed:
  true, python_version: "3.12"` uv provides that interpreter; when it cannot
  (offline), setup says so in one line and uses `python3` instead.

  Options:
    * `--python` - interpreter that creates the virtualenv (default: `python3`)
    * `--venv` - where to create it (default: `runtime_dir`, `.venv`); set
      `config :snakepit, python_executable: "<venv>/bin/python"` when you change it
    * `--requirements` - an extra requirements file of your own (repeatable)

  Running it again only installs what is missing.
  """
  use Mix.Task

  @impl true
  def run(argv) do
    {opts, _, _} =
      OptionParser.parse(argv, strict: [python: :string, venv: :string, requirements: :keep])

    Mix.Task.run("compile", [])
    Application.load(:snakepit)

    bootstrap =
      [
        skip_mix_deps: true,
        python: opts[:python],
        requirements: Keyword.get_values(opts, :requirements)
      ] ++ if(opts[:venv], do: [venv: opts[:venv]], else: [])

    case Snakepit.Bootstrap.run(bootstrap) do
      :ok -> Mix.shell().info("Check it with: mix snakepit.doctor")
      {:error, reason} -> Mix.raise("mix snakepit.setup: #{reason}")
    end
  end
end
