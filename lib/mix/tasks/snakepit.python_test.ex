defmodule Mix.Tasks.Snakepit.PythonTest do
  @shortdoc "Runs the app's Python tests with Snakepit's interpreter"
  @moduledoc """
  Runs pytest over the host app's Python tests with the interpreter the
  workers use (`Snakepit.PythonRuntime`), with the bridge package
  (`snakepit_bridge`) and every app's `priv/python` importable, as in a
  worker.

      mix snakepit.python_test
      mix snakepit.python_test --no-bootstrap
      mix snakepit.python_test --path test/py -- -k predict -x

  First it runs `mix snakepit.setup`'s bootstrap (and installs pytest when
  it is missing) unless `--no-bootstrap`. Tests are looked for in
  `--path`, else `config :snakepit, :python_test, path:`, else
  `test/python`. Arguments after `--` go to pytest. The task's exit status
  is pytest's.
  """
  use Mix.Task

  alias Snakepit.PythonRuntime

  @impl true
  def run(argv) do
    {mine, pytest_args} = split(argv)
    {opts, _, _} = OptionParser.parse(mine, strict: [bootstrap: :boolean, path: :string])

    Mix.Task.run("compile", [])
    Application.load(:snakepit)

    if Keyword.get(opts, :bootstrap, true) do
      with :ok <- Snakepit.Bootstrap.run(skip_mix_deps: true) do
        Snakepit.PythonPackages.ensure!({:list, ["pytest"]}, quiet: true)
      else
        {:error, reason} -> Mix.raise("mix snakepit.python_test: bootstrap failed: #{reason}")
      end
    end

    python =
      PythonRuntime.executable_path() ||
        Mix.raise("mix snakepit.python_test: #{PythonRuntime.missing_reason()}")

    path =
      opts[:path] ||
        Keyword.get(Snakepit.Defaults.python_test(), :path, "test/python")

    unless File.exists?(path),
      do: Mix.raise("mix snakepit.python_test: no Python tests at #{path}")

    env = PythonRuntime.runtime_env()
    env = Map.put(env, "PYTHONPATH", Enum.join([File.cwd!(), env["PYTHONPATH"]], ":"))

    {_, status} =
      System.cmd(python, ["-m", "pytest", path | pytest_args],
        env: Map.to_list(env),
        stderr_to_stdout: true,
        into: IO.stream()
      )

    if status != 0, do: exit({:shutdown, status})
    :ok
  end

  defp split(argv) do
    case Enum.split_while(argv, &(&1 != "--")) do
      {mine, ["--" | rest]} -> {mine, rest}
      {mine, []} -> {mine, []}
    end
  end
end
