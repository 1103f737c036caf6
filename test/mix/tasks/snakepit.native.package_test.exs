defmodule Mix.Tasks.Snakepit.Native.PackageTest do
  # A prebuilt native library, end to end: package it here, then build a
  # host app that depends on Snakepit in a shell where cargo cannot be
  # found, and load the library there.
  use ExUnit.Case, async: false
  @moduletag timeout: 600_000

  @root Path.expand("../../..", __DIR__)

  setup do
    dir = Path.join(System.tmp_dir!(), "snakepit-prebuilt-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  defp host_app(dir) do
    host = Path.join(dir, "host")
    File.mkdir_p!(Path.join(host, "config"))

    File.write!(Path.join(host, "mix.exs"), """
    defmodule Host.MixProject do
      use Mix.Project
      def project, do: [app: :host, version: "0.1.0", deps: [{:snakepit, path: #{inspect(@root)}}]]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(
      Path.join([host, "config", "config.exs"]),
      "import Config\nconfig :snakepit, pooling_enabled: false\n"
    )

    host
  end

  # No cargo on the PATH, and a HOME without ~/.cargo.
  defp no_cargo_env(dir, prebuilt) do
    path =
      System.get_env("PATH")
      |> String.split(":")
      |> Enum.reject(&String.contains?(&1, "cargo"))
      |> Enum.join(":")

    home = Path.join(dir, "home")
    File.mkdir_p!(home)

    [
      {"PATH", path},
      {"HOME", home},
      {"MIX_HOME", Path.join(home, ".mix")},
      {"MIX_ENV", "prod"},
      {"CARGO_TARGET_DIR", nil},
      {"SNAKEPIT_CARGO_PROFILE", nil},
      {"SNAKEPIT_NATIVE_PREBUILT", prebuilt}
    ]
  end

  defp mix(host, args, env),
    do: System.cmd("mix", args, cd: host, env: env, stderr_to_stdout: true)

  test "package, then a host app builds and loads it without cargo; bad or missing artefacts are refused",
       %{dir: dir} do
    archive =
      ExUnit.CaptureIO.capture_io(fn ->
        send(self(), {:archive, Mix.Task.run("snakepit.native.package", ["--out", dir])})
      end)

    assert archive =~ "wrote "
    assert_received {:archive, archive}
    assert File.read!(archive <> ".sha256") =~ Mix.Tasks.Compile.SnakepitNative.sha256(archive)

    host = host_app(dir)
    env_path = no_cargo_env(dir, nil) |> List.keyfind("PATH", 0) |> elem(1)
    assert Enum.all?(String.split(env_path, ":"), &(not File.exists?(Path.join(&1, "cargo"))))

    # Neither cargo nor an artefact: the compiler says what is missing.
    {out, status} = mix(host, ["compile"], no_cargo_env(dir, nil))
    assert status != 0
    assert out =~ "cargo is not installed" and out =~ "SNAKEPIT_NATIVE_PREBUILT"

    # A damaged artefact is refused by its checksum.
    bad = Path.join(dir, Path.basename(archive))
    File.mkdir_p!(Path.join(dir, "bad"))
    bad = Path.join([dir, "bad", Path.basename(bad)])
    <<first, rest::binary>> = File.read!(archive)
    File.write!(bad, <<Bitwise.bxor(first, 1), rest::binary>>)
    File.cp!(archive <> ".sha256", bad <> ".sha256")
    {out, status} = mix(host, ["compile"], no_cargo_env(dir, bad))
    assert status != 0 and out =~ "checksum does not match"

    # The good one: built and loaded with no Rust toolchain.
    {out, status} = mix(host, ["compile"], no_cargo_env(dir, archive))
    assert status == 0, out
    refute out =~ "cargo build"

    {out, status} =
      mix(
        host,
        [
          "run",
          "--no-compile",
          "-e",
          "IO.puts(Snakepit.Native.process_alive(String.to_integer(System.pid())))"
        ],
        no_cargo_env(dir, archive)
      )

    assert status == 0, out
    assert out |> String.split("\n", trim: true) |> List.last() == "true"
  end
end
