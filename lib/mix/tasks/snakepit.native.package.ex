defmodule Mix.Tasks.Snakepit.Native.Package do
  @shortdoc "Writes a prebuilt native library for sites without Rust"
  @moduledoc """
  Packs the built native library and guard program into
  `snakepit_native-<version>-<target>.tar.gz` (with a `manifest.json` of
  their checksums) and writes `<archive>.sha256` beside it, in `--out`
  (default `_build/native_package`).

      mix snakepit.native.package --out dist/

  At a site without cargo, set `SNAKEPIT_NATIVE_PREBUILT=dist/<archive>`
  (or `config :snakepit, native_prebuilt: "..."`) and compile as usual: the
  compiler checks the archive and installs it (see
  `Mix.Tasks.Compile.SnakepitNative`). The target is the BEAM's
  architecture string (`:erlang.system_info(:system_architecture)`), so an
  artefact is for one OS and CPU family.
  """
  use Mix.Task

  alias Mix.Tasks.Compile.SnakepitNative, as: Native

  @impl true
  def run(argv) do
    {opts, _, _} = OptionParser.parse(argv, strict: [out: :string])
    Mix.Task.run("compile", [])

    root = Path.expand("../../..", __DIR__)
    native = Path.join(:code.priv_dir(:snakepit), "native")
    out = Path.expand(opts[:out] || "_build/native_package")
    File.mkdir_p!(out)

    files =
      for file <- Native.files() do
        path = Path.join(native, file)

        unless File.regular?(path),
          do: Mix.raise("#{path} is missing; run mix compile with cargo first")

        {file, path}
      end

    manifest = %{
      crate: "snakepit_native",
      version: Native.crate_version(root),
      target: Native.target(),
      files: Map.new(files, fn {file, path} -> {file, Native.sha256(path)} end)
    }

    archive = Path.join(out, Native.artefact_name(root))

    entries =
      [{~c"manifest.json", JSON.encode!(manifest)}] ++
        for({file, path} <- files, do: {String.to_charlist(file), String.to_charlist(path)})

    :ok = :erl_tar.create(String.to_charlist(archive), entries, [:compressed])
    File.write!(archive <> ".sha256", "#{Native.sha256(archive)}  #{Path.basename(archive)}\n")
    Mix.shell().info("wrote #{archive} (and .sha256)")
    archive
  end
end
