defmodule Mix.Tasks.Snakepit.Doctor do
  @shortdoc "Checks that Snakepit can start Python workers here"
  @moduledoc """
  Checks, in order, what a worker needs and says how to fix what is wrong:

    1. the native library loads;
    2. a Python interpreter is found (see `Snakepit.PythonRuntime`) and is 3.9+;
    3. `grpc` and `google.protobuf` import in it;
    4. the `snakepit_bridge` package imports with the workers' `PYTHONPATH`.

  Exits with status 1 when a check fails.
  """
  use Mix.Task

  alias Snakepit.PythonRuntime

  @impl true
  def run(_argv) do
    Mix.Task.run("compile", [])
    Application.load(:snakepit)

    results = [
      check("native library", &native/0),
      check("Python interpreter", &python/0),
      check(
        "grpcio and protobuf",
        fn -> python_import("import grpc, google.protobuf; print(grpc.__version__)") end
      ),
      check(
        "snakepit_bridge package",
        fn -> python_import("import snakepit_bridge.server; print(snakepit_bridge.__file__)") end
      )
    ]

    if Enum.all?(results),
      do: Mix.shell().info("\nAll checks passed."),
      else: exit({:shutdown, 1})
  end

  defp check(name, fun) do
    case fun.() do
      {:ok, detail} ->
        Mix.shell().info("[ok]   #{name}: #{detail}")
        true

      {:error, problem, fix} ->
        Mix.shell().error("[fail] #{name}: #{problem}\n       fix: #{fix}")
        false
    end
  end

  defp native do
    if Code.ensure_loaded?(Snakepit.Native) and
         Snakepit.Native.process_alive(String.to_integer(System.pid())) do
      {:ok, Path.join(:code.priv_dir(:snakepit), "native/libsnakepit_native.so")}
    else
      {:error, "the NIF did not load",
       "run `mix compile` (needs cargo: https://rustup.rs) and check its output"}
    end
  rescue
    e -> {:error, Exception.message(e), "run `mix compile` and check the cargo output"}
  end

  defp python do
    with {:ok, path} <- PythonRuntime.executable(),
         {out, 0} <-
           System.cmd(path, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
             stderr_to_stdout: true
           ) do
      version = String.trim(out)

      if Version.match?(version <> ".0", ">= 3.9.0"),
        do: {:ok, "#{path} (#{version})"},
        else: {:error, "#{path} is Python #{version}", "use Python 3.9 or newer"}
    else
      {:error, message} ->
        {:error, message, "run `mix snakepit.setup`"}

      {out, _} ->
        {:error, "the interpreter does not run: #{String.trim(out)}", "run `mix snakepit.setup`"}
    end
  end

  defp python_import(code) do
    with {:ok, path} <- PythonRuntime.executable() do
      env = [{"PYTHONPATH", Enum.join(PythonRuntime.python_path(), ":")}]

      case System.cmd(path, ["-c", code], env: env, stderr_to_stdout: true) do
        {out, 0} ->
          {:ok, String.trim(out)}

        {out, _} ->
          {:error, out |> String.trim() |> String.split("\n") |> List.last(),
           "run `mix snakepit.setup`"}
      end
    else
      {:error, message} -> {:error, message, "run `mix snakepit.setup`"}
    end
  end
end
