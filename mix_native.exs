defmodule Mix.Tasks.Compile.SnakepitNative do
  @moduledoc """
  Builds the `snakepit_native` Rust crate with cargo and installs the shared
  library and the `snakepit_guard` program under `priv/native/`, and mirrors the `snakepit_bridge` Python
  package into `priv/python/` so that a release carries both.

  The library is installed atomically (copy to a temporary name, then
  rename) so that a concurrently starting VM never loads half a file.
  Set `SNAKEPIT_CARGO_PROFILE=debug` for a debug build.

  ## Without a Rust toolchain

  `mix snakepit.native.package` writes a prebuilt artefact for this target
  (`snakepit_native-<version>-<target>.tar.gz`, with a `.sha256` beside it).
  Point `SNAKEPIT_NATIVE_PREBUILT` (or `config :snakepit, native_prebuilt:`)
  at it and this compiler installs it instead of running cargo, once the
  archive's checksum, the crate version, the target and every file's
  checksum match. When one does not, it builds with cargo if there is one
  (saying why), and otherwise fails naming what is missing.
  """
  use Mix.Task.Compiler

  @crate "snakepit_native"

  @impl true
  def run(_args) do
    root = Path.dirname(__ENV__.file)
    priv = Path.join(root, "priv")

    with :ok <- provide_library(root, priv) do
      sync_python(root, priv)
      {:ok, []}
    else
      {:error, message} ->
        Mix.shell().error(message)
        {:error, [diagnostic(message)]}
    end
  end

  defp profile, do: System.get_env("SNAKEPIT_CARGO_PROFILE", "release")

  @files ["lib#{@crate}.so", "snakepit_guard"]

  @doc false
  # The files an artefact carries.
  def files, do: @files

  @doc false
  # What an artefact is built for: the BEAM's own architecture string.
  def target, do: to_string(:erlang.system_info(:system_architecture))

  @doc false
  def crate_version(root) do
    toml = File.read!(Path.join([root, "native", @crate, "Cargo.toml"]))
    [_, version] = Regex.run(~r/^version\s*=\s*"([^"]+)"/m, toml)
    version
  end

  @doc false
  def artefact_name(root), do: "#{@crate}-#{crate_version(root)}-#{target()}.tar.gz"

  @doc false
  def sha256(path), do: :crypto.hash(:sha256, File.read!(path)) |> Base.encode16(case: :lower)

  defp prebuilt do
    case System.get_env("SNAKEPIT_NATIVE_PREBUILT") do
      value when value not in [nil, ""] -> Path.expand(value)
      _ -> if path = Application.get_env(:snakepit, :native_prebuilt), do: Path.expand(path)
    end
  end

  defp cargo do
    System.find_executable("cargo") ||
      Enum.find([Path.expand("~/.cargo/bin/cargo")], &File.exists?/1)
  end

  defp provide_library(root, priv) do
    case {prebuilt(), cargo()} do
      {nil, nil} ->
        {:error,
         "cannot build the native library: cargo is not installed (https://rustup.rs), and no " <>
           "prebuilt library is given (SNAKEPIT_NATIVE_PREBUILT=<archive from mix snakepit.native.package>)"}

      {nil, cargo} ->
        with :ok <- build_crate(root, cargo), do: install_library(root, priv)

      {archive, cargo} ->
        case install_prebuilt(root, priv, archive) do
          :ok ->
            :ok

          {:error, reason} when cargo != nil ->
            Mix.shell().info(
              "snakepit: prebuilt native library not used (#{reason}); building with cargo"
            )

            with :ok <- build_crate(root, cargo), do: install_library(root, priv)

          {:error, reason} ->
            {:error,
             "prebuilt native library #{archive} not used: #{reason}; and cargo is not installed to build one"}
        end
    end
  end

  defp install_prebuilt(root, priv, archive) do
    tmp = Path.join(System.tmp_dir!(), "snakepit-prebuilt-#{System.unique_integer([:positive])}")

    try do
      with :ok <- check_archive(archive),
           :ok <-
             :erl_tar.extract(String.to_charlist(archive), [
               :compressed,
               cwd: String.to_charlist(tmp)
             ]),
           {:ok, manifest} <- read_manifest(tmp),
           :ok <- check_manifest(root, manifest, tmp) do
        Enum.reduce_while(@files, :ok, fn file, :ok ->
          case install(Path.join(tmp, file), priv) do
            :ok -> {:cont, :ok}
            error -> {:halt, error}
          end
        end)
      else
        {:error, reason} when is_binary(reason) -> {:error, reason}
        {:error, reason} -> {:error, "cannot unpack it: #{inspect(reason)}"}
      end
    after
      File.rm_rf(tmp)
    end
  end

  defp check_archive(archive) do
    sum_file = archive <> ".sha256"

    cond do
      not File.regular?(archive) ->
        {:error, "#{archive} does not exist"}

      not File.regular?(sum_file) ->
        {:error, "its checksum file #{sum_file} is missing"}

      File.read!(sum_file) |> String.split() |> List.first() != sha256(archive) ->
        {:error, "its checksum does not match #{sum_file}"}

      true ->
        :ok
    end
  end

  defp read_manifest(dir) do
    with {:ok, text} <- File.read(Path.join(dir, "manifest.json")),
         {:ok, manifest} <- JSON.decode(text) do
      {:ok, manifest}
    else
      _ -> {:error, "it has no readable manifest.json"}
    end
  end

  defp check_manifest(root, manifest, dir) do
    version = crate_version(root)

    cond do
      manifest["version"] != version ->
        {:error, "it is version #{manifest["version"]}, this is #{@crate} #{version}"}

      manifest["target"] != target() ->
        {:error, "it is built for #{manifest["target"]}, this is #{target()}"}

      bad = Enum.find(@files, &(manifest["files"][&1] != sha256_or_nil(Path.join(dir, &1)))) ->
        {:error, "#{bad} does not match the checksum in its manifest"}

      true ->
        :ok
    end
  end

  defp sha256_or_nil(path), do: if(File.regular?(path), do: sha256(path))

  defp build_crate(root, cargo) do
    # A build that has work to do shows cargo's progress (a fresh checkout
    # compiles for a minute or two); an up-to-date one stays quiet.
    stale = stale?(root)

    if stale do
      Mix.shell().info(
        "snakepit: building the native core (cargo build, #{profile()} profile; a minute or " <>
          "two on a fresh checkout, seconds after a change)"
      )
    end

    args =
      ["build", "-p", @crate, "-p", "snakepit_core"] ++
        if(stale, do: [], else: ["--quiet"]) ++
        ["--manifest-path", Path.join(root, "Cargo.toml")] ++
        if profile() == "release", do: ["--release"], else: []

    case System.cmd(cargo, args, cd: root, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} ->
        # Inputs cargo had no need to rebuild for (a test, a comment in an
        # unused file) no longer count as newer.
        if stale, do: File.touch(built_library(root))
        :ok

      {_, code} ->
        {:error, "cargo build of #{@crate} failed (exit #{code})"}
    end
  rescue
    e in ErlangError -> {:error, "cannot run cargo: #{Exception.message(e)}"}
  end

  defp built_library(root) do
    target = System.get_env("CARGO_TARGET_DIR", Path.join(root, "target"))
    Path.join([target, profile(), "lib#{@crate}.so"])
  end

  # Whether the built library is missing or older than any input of it.
  defp stale?(root) do
    case File.stat(built_library(root), time: :posix) do
      {:ok, %{mtime: built_at}} ->
        inputs =
          Path.wildcard(Path.join(root, "native/**/*.{rs,toml}")) ++
            Path.wildcard(Path.join(root, "proto/*.proto")) ++
            [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")]

        Enum.any?(inputs, fn input ->
          match?({:ok, %{mtime: t}} when t > built_at, File.stat(input, time: :posix))
        end)

      {:error, _} ->
        true
    end
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
