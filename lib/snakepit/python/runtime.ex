defmodule Snakepit.PythonRuntime do
  @moduledoc """
  Which Python runs the workers, and the environment it runs with.

  The interpreter is, in order: `config :snakepit, python_executable: path`,
  the `SNAKEPIT_PYTHON` environment variable, the virtualenv `.venv/` in the
  current directory (what `mix snakepit.setup` creates), then `python3` on
  the `PATH`.

  `PYTHONPATH` gets the bridge package shipped in Snakepit's `priv/python`,
  then the `priv/python` directory of every loaded application that has one
  (so a host app's `priv/python/my_adapter.py` is importable as
  `my_adapter`), then `config :snakepit, python_path: [...]`, then whatever
  `PYTHONPATH` already held.
  """

  @doc "Absolute path of the Python interpreter, or an error saying what was tried."
  @spec executable() :: {:ok, String.t()} | {:error, String.t()}
  def executable do
    # Looked at in order and only as far as needed: every worker start asks.
    candidates = [
      {"config :snakepit, python_executable",
       fn -> Application.get_env(:snakepit, :python_executable) end},
      {"SNAKEPIT_PYTHON", fn -> System.get_env("SNAKEPIT_PYTHON") end},
      {".venv in #{File.cwd!()}", &venv_python/0},
      {"python3 on PATH", fn -> System.find_executable("python3") end}
    ]

    Enum.find_value(candidates, fn {_what, lookup} ->
      if path = lookup.(), do: resolve(path)
    end) ||
      {:error,
       "no Python interpreter found (tried #{Enum.map_join(candidates, ", ", &elem(&1, 0))}); " <>
         "run `mix snakepit.setup` or set config :snakepit, python_executable: \"/path/to/python3\""}
  end

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

    configured = Application.get_env(:snakepit, :python_path, [])
    existing = System.get_env("PYTHONPATH", "") |> String.split(":", trim: true)
    Enum.uniq([own | apps] ++ configured ++ existing)
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
    |> Map.merge(%{
      "PYTHONPATH" => Enum.join(python_path(), ":"),
      "PYTHONUNBUFFERED" => "1",
      "PYTHONDONTWRITEBYTECODE" => "1"
    })
    |> Map.merge(Snakepit.ZeroCopy.Directory.worker_env())
    |> Map.merge(Map.new(extra))
    |> Enum.to_list()
  end
end
