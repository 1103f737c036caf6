defmodule Snakepit.EnvDoctor do
  @moduledoc """
  Checks that this machine can run Snakepit's Python workers, and says how to
  fix what is wrong. Behind `mix snakepit.doctor`; an application can call
  `ensure_python!/1` at boot to fail in one line instead of crashing
  workers later.

  Checks, in order (`:only` picks some):

  | name | error when | warning when |
  |---|---|---|
  | `:native_library` | the NIF does not load | |
  | `:python` | no interpreter (`Snakepit.PythonRuntime`) | |
  | `:python_version` | older than 3.9 | |
  | `:grpc` | `grpc` or `google.protobuf` do not import | |
  | `:bridge` | `snakepit_bridge` does not import with the workers' `PYTHONPATH` | |
  | `:uv` | | `strategy: :uv` but no uv |
  | `:packages` | `config :snakepit, :python_packages, requirements:` not met | |
  """

  alias Snakepit.PythonRuntime

  @type check_result :: %{name: atom(), status: :ok | :warning | :error, message: String.t()}

  @checks [:native_library, :python, :python_version, :grpc, :bridge, :uv, :packages]
  @python_checks [:python, :python_version, :grpc, :bridge]

  @doc """
  Runs the checks: `{:ok, results}` when none failed, `{:error, results}`
  otherwise. Options: `:python` (an interpreter to check instead of the
  configured one), `:only` (a list of check names).
  """
  @spec run(keyword()) :: {:ok, [check_result()]} | {:error, [check_result()]}
  def run(opts \\ []) do
    only = Keyword.get(opts, :only, @checks)
    python = Keyword.get_lazy(opts, :python, fn -> PythonRuntime.executable_path() end)

    {results, _} =
      Enum.map_reduce(Enum.filter(@checks, &(&1 in only)), python, fn name, python ->
        # Checks that need an interpreter are errors without one, not crashes.
        result =
          if name in (@python_checks -- [:python]) and python == nil,
            do: no_python(name),
            else: check(name, python)

        {Map.put(result, :name, name), python}
      end)

    if Enum.any?(results, &(&1.status == :error)), do: {:error, results}, else: {:ok, results}
  end

  @doc """
  Raises (a `RuntimeError` with one line naming the check and the fix) unless
  the interpreter, its version, grpc and the bridge package are all fine.
  Takes `run/1`'s options.
  """
  @spec ensure_python!(keyword()) :: :ok
  def ensure_python!(opts \\ []) do
    case run(Keyword.put(opts, :only, @python_checks)) do
      {:ok, _} ->
        :ok

      {:error, results} ->
        failed = Enum.find(results, &(&1.status == :error))
        raise "Snakepit cannot start Python workers: #{failed.name}: #{failed.message}"
    end
  end

  defp no_python(name),
    do: %{
      name: name,
      status: :error,
      message: "not checked: #{PythonRuntime.missing_reason() || "no interpreter"}"
    }

  defp check(:native_library, _python) do
    if Code.ensure_loaded?(Snakepit.Native) and
         Snakepit.Native.process_alive(String.to_integer(System.pid())) do
      ok(Path.join(:code.priv_dir(:snakepit), "native/libsnakepit_native.so"))
    else
      error(
        "the native library did not load; run `mix compile` (cargo, or a prebuilt library: mix snakepit.native.package)"
      )
    end
  rescue
    e -> error("the native library did not load (#{Exception.message(e)}); run `mix compile`")
  end

  defp check(:python, nil), do: error("#{PythonRuntime.missing_reason()}")

  defp check(:python, python) do
    if File.regular?(python), do: ok(python), else: error("#{python} does not exist")
  end

  defp check(:python_version, python) do
    case python_cmd(python, "import sys; print('%d.%d.%d' % sys.version_info[:3])") do
      {:ok, version} ->
        if Version.match?(version, ">= 3.9.0"),
          do: ok("Python #{version}"),
          else: error("#{python} is Python #{version}; use Python 3.9 or newer")

      {:error, out} ->
        error("#{python} does not run: #{out}")
    end
  end

  defp check(:grpc, python) do
    case python_cmd(python, "import grpc, google.protobuf; print(grpc.__version__)") do
      {:ok, version} -> ok("grpcio #{version}")
      {:error, out} -> error("#{out}; run `mix snakepit.setup`")
    end
  end

  defp check(:bridge, python) do
    case python_cmd(
           python,
           "import snakepit_bridge.server, os; print(os.path.dirname(snakepit_bridge.__file__))"
         ) do
      {:ok, dir} ->
        ok(dir)

      {:error, out} ->
        if out =~ "snakepit_bridge",
          do: error("#{out}; run `mix compile` (it mirrors the bridge into priv/python)"),
          else: error("#{out}; run `mix snakepit.setup`")
    end
  end

  defp check(:uv, _python) do
    cond do
      PythonRuntime.config().strategy != :uv ->
        ok("not used (strategy: :pip)")

      uv = System.find_executable("uv") ->
        ok(uv)

      true ->
        warning(
          "strategy: :uv but uv is not on the PATH; `mix snakepit.setup` installs it with pip"
        )
    end
  end

  defp check(:packages, python) do
    requirements =
      Keyword.get(Snakepit.Defaults.python_packages(), :requirements, [])

    cond do
      requirements == [] ->
        ok("none configured")

      python == nil ->
        no_python(:packages)

      true ->
        case Snakepit.PythonPackages.check_installed(requirements, python: python) do
          {:ok, :all_installed} ->
            ok("#{length(requirements)} requirement(s) met")

          {:ok, {:missing, missing}} ->
            error("missing: #{Enum.join(missing, ", ")}; run `mix snakepit.setup`")
        end
    end
  rescue
    e in Snakepit.PackageError -> error(Exception.message(e))
  end

  defp python_cmd(python, code) do
    env = Map.to_list(PythonRuntime.runtime_env())

    case System.cmd(python, ["-c", code], env: env, stderr_to_stdout: true) do
      {out, 0} -> {:ok, out |> String.trim() |> String.split("\n") |> List.last()}
      {out, _} -> {:error, out |> String.trim() |> String.split("\n") |> List.last()}
    end
  rescue
    e in ErlangError -> {:error, Exception.message(e)}
  end

  defp ok(message), do: %{status: :ok, message: message}
  defp warning(message), do: %{status: :warning, message: message}
  defp error(message), do: %{status: :error, message: message}
end
