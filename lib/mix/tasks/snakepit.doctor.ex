defmodule Mix.Tasks.Snakepit.Doctor do
  @shortdoc "Checks that Snakepit can start Python workers here"
  @moduledoc """
  Runs `Snakepit.EnvDoctor`'s checks (native library, interpreter and its
  version, grpcio, the bridge package, uv when configured, the configured
  requirements) and prints one line per check with the fix for what is
  wrong.

      mix snakepit.doctor
      mix snakepit.doctor --python /opt/venv/bin/python

  Exits with status 1 when a check fails (warnings do not fail).
  """
  use Mix.Task

  @impl true
  def run(argv) do
    {opts, _, _} = OptionParser.parse(argv, strict: [python: :string])
    Mix.Task.run("compile", [])
    Application.load(:snakepit)

    {outcome, results} = Snakepit.EnvDoctor.run(Keyword.take(opts, [:python]))

    for %{name: name, status: status, message: message} <- results do
      line = "#{String.pad_trailing("[#{status}]", 10)} #{name}: #{message}"
      if status == :error, do: Mix.shell().error(line), else: Mix.shell().info(line)
    end

    case outcome do
      :ok -> Mix.shell().info("\nAll checks passed.")
      :error -> exit({:shutdown, 1})
    end
  end
end
