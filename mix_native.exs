defmodule Mix.Tasks.Compile.SnakepitNative do
  @moduledoc """
  Builds the `snakepit_native` Rust crate with cargo and installs the shared
  library and the `snakepit_guard` program under `priv/native/`, and mirrors the `snakepit_bridge` Python
  package into `priv/python/` so that a release carries both.

  The library is installed atomically (copy to a temporary name, then
  rename) so that a concurrently starting VM never loads half a file.
  Set `SNAKEPIT_CARGO_PROFILE=debug` for a debug build.
  """
  use Mix.Task.Compiler

  @crate "snakepit_native"

  @impl true
  def run(_args) do
    root = Path.dirname(__ENV__.file)
    priv = Path.join(root, "priv")

    with :ok <- build_crate(root),
         :ok <- install_library(root, priv) do
      sync_python(root, priv)
      {:ok, []}
    else
      {:error, message} ->
        Mix.shell().error(message)
        {:error, [diagnostic(message)]}
    end
  end

  defp profile, do: System.get_env("SNAKEPIT_CARGO_PROFILE", "release")

  defp build_crate(root) do
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")

    args =
      ["build", "--quiet", "-p", @crate, "-p", "snakepit_core"] ++
        ["--manifest-path", Path.join(root, "Cargo.toml")] ++
        if profile() == "release", do: ["--release"], else: []

    case System.cmd(cargo, args, cd: root, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} -> :ok
      {_, code} -> {:error, "cargo build of #{@crate} failed (exit #{code})"}
    end
  rescue
    e in ErlangError -> {:error, "cannot run cargo: #{Exception.message(e)}"}
  end

  # The NIF library and the guard program every worker's guard execs.
  defp install_library(root, priv) do
    target = System.get_env("CARGO_TARGET_DIR", Path.join(root, "target"))

    with :ok <- install(Path.join([target, profile(), "lib#{@crate}.so"]), priv) do
      install(Path.join([target, profile(), "snakepit_guard"]), priv)
    end
  end

  defp install(built, priv) do
    dest_dir = Path.join(priv, "native")
    dest = Path.join(dest_dir, Path.basename(built))

    cond do
      not File.exists?(built) ->
        {:error, "cargo finished but #{built} is missing"}

      File.exists?(dest) and same_file?(built, dest) ->
        :ok

      true ->
        File.mkdir_p!(dest_dir)
        tmp = dest <> ".tmp-#{System.unique_integer([:positive])}"
        File.cp!(built, tmp)
        File.chmod!(tmp, 0o755)
        File.rename!(tmp, dest)
        :ok
    end
  end

  defp same_file?(a, b) do
    File.stat!(a).size == File.stat!(b).size and File.read!(a) == File.read!(b)
  end

  # The worker's run-time requirements, for `mix snakepit.setup`, come
  # from the one list of them: `dependencies` in python/pyproject.toml.
  defp write_requirements(pyproject, priv) do
    with {:ok, text} <- File.read(pyproject),
         [_, list] <- Regex.run(~r/^dependencies = \[(.*?)^\]/ms, text) do
      deps = Regex.scan(~r/"([^"]+)"/, list, capture: :all_but_first) |> List.flatten()

      content =
        "# Generated from python/pyproject.toml by the Mix compiler: what a worker needs.\n" <>
          Enum.map_join(deps, "", &(&1 <> "\n"))

      installed = Path.join([priv, "python", "requirements.txt"])

      unless File.exists?(installed) and File.read!(installed) == content do
        File.mkdir_p!(Path.dirname(installed))
        File.write!(installed, content)
      end
    end
  end

  # Mirrors python/snakepit_bridge into priv/python/snakepit_bridge, so the
  # worker package is found from the application's own directory at runtime.
  defp sync_python(root, priv) do
    src = Path.join([root, "python", "snakepit_bridge"])
    dest = Path.join([priv, "python", "snakepit_bridge"])

    write_requirements(Path.join([root, "python", "pyproject.toml"]), priv)

    if File.dir?(src) do
      wanted =
        Path.wildcard(Path.join(src, "**/*.{py,typed}"))
        |> Enum.reject(&String.contains?(&1, "__pycache__"))
        |> MapSet.new(&Path.relative_to(&1, src))

      for rel <- wanted do
        from = Path.join(src, rel)
        to = Path.join(dest, rel)

        unless File.exists?(to) and same_file?(from, to) do
          File.mkdir_p!(Path.dirname(to))
          File.cp!(from, to)
        end
      end

      for path <- Path.wildcard(Path.join(dest, "**/*.{py,typed}")),
          not MapSet.member?(wanted, Path.relative_to(path, dest)) do
        File.rm!(path)
      end
    end

    :ok
  end

  defp diagnostic(message) do
    %Mix.Task.Compiler.Diagnostic{
      compiler_name: "snakepit_native",
      file: "native/#{@crate}",
      message: message,
      position: nil,
      severity: :error
    }
  end
end
