defmodule Snakepit.BootstrapTest do
  # The setup workflow: its steps with an injected runner, then for real
  # (pip and uv) into virtualenvs in a temporary directory.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 600_000

  import ExUnit.CaptureIO

  alias Snakepit.{Bootstrap, EnvDoctor}

  defmodule FakeRunner do
    @behaviour Snakepit.Bootstrap.Runner
    def cmd(cmd, args, _opts) do
      send(self(), {:cmd, Path.basename(cmd), args})
      if match?(["python", "install" | _], args), do: {:error, "error: dns error\n"}, else: :ok
    end

    def mix(task, args) do
      send(self(), {:mix, task, args})
      :ok
    end
  end

  @venv Path.expand("../../.venv", __DIR__)

  defp tmp do
    dir = Path.join(System.tmp_dir!(), "snakepit-boot-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    dir
  end

  test "the steps, in order, with an injected runner" do
    # An existing environment that has everything: nothing to create or install.
    assert :ok = Bootstrap.run(runner: FakeRunner, venv: @venv)
    assert_received {:mix, "deps.get", []}
    refute_received {:cmd, _, _}

    root = tmp()
    fresh = Path.join(root, "env")
    # A fresh one: python3 -m venv, then the installs fail on the fake env.
    assert {:error, reason} = Bootstrap.run(runner: FakeRunner, venv: fresh, skip_mix_deps: true)
    refute_received {:mix, _, _}
    assert_received {:cmd, "python3", ["-m", "venv", ^fresh]}
    assert reason =~ fresh
  end

  test "uv strategy: uv from PyPI, the managed interpreter asked for, the fallback named" do
    root = tmp()
    opts = [runner: FakeRunner, project_root: root, venv: @venv, skip_mix_deps: true]
    assert :ok = Bootstrap.run(opts ++ [strategy: :uv, managed: true, python_version: "3.12"])

    tools = Path.join([root, "_build", "snakepit_uv"])
    assert_received {:cmd, "python3", ["-m", "venv", ^tools]}
    assert_received {:cmd, "python", ["-m", "pip", "install", "--quiet", "uv"]}
    assert_received {:cmd, "uv", ["python", "install", "3.12"]}
    # uv could not provide it (the fake says dns error): the system python3.
    assert_received {:cmd, "uv",
                     ["venv", "--seed", "--allow-existing", "--python", python3, @venv]}

    assert Path.basename(python3) == "python3"
  end

  test "pip strategy for real: a virtualenv the doctor passes" do
    venv = Path.join(tmp(), ".venv")
    output = capture_io(fn -> assert :ok = Bootstrap.run(venv: venv, skip_mix_deps: true) end)
    assert output =~ "Creating virtualenv #{venv}" and output =~ "ready: #{venv}/bin/python"

    assert {:ok, _} =
             EnvDoctor.run(python: Path.join([venv, "bin", "python"]), only: [:grpc, :bridge])
  end

  test "uv strategy for real: uv from PyPI makes the environment; offline, managed falls back in one line" do
    root = tmp()
    venv = Path.join(root, ".venv")

    output =
      capture_io(fn ->
        assert :ok =
                 Bootstrap.run(
                   project_root: root,
                   venv: venv,
                   skip_mix_deps: true,
                   strategy: :uv,
                   managed: true,
                   python_version: "3.12"
                 )
      end)

    assert File.exists?(Path.join([root, "_build", "snakepit_uv", "bin", "uv"]))
    python = Path.join([venv, "bin", "python"])
    assert {:ok, _} = EnvDoctor.run(python: python, only: [:grpc, :bridge])
    {version, 0} = System.cmd(python, ["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])

    # Where uv can download Python it is 3.12; here (no network beyond the
    # package index) setup says it could not and which interpreter it used.
    if String.trim(version) != "3.12" do
      [line] =
        output |> String.split("\n") |> Enum.filter(&(&1 =~ "uv could not provide Python 3.12"))

      assert line =~ "falling back"
    end
  end
end
