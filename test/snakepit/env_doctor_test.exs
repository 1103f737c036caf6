defmodule Snakepit.EnvDoctorTest do
  # The doctor and the runtime's facts, against the real interpreter and a
  # real virtualenv that lacks grpcio.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.{EnvDoctor, PythonRuntime}

  setup_all do
    dir = Path.join(System.tmp_dir!(), "snakepit-doctor-#{System.unique_integer([:positive])}")
    {_, 0} = System.cmd("python3", ["-m", "venv", "--without-pip", dir], stderr_to_stdout: true)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{bare: Path.join([dir, "bin", "python"])}
  end

  test "the configured environment passes every check" do
    assert {:ok, results} = EnvDoctor.run()

    assert Enum.map(results, & &1.name) == [
             :native_library,
             :python,
             :python_version,
             :grpc,
             :bridge,
             :uv,
             :packages
           ]

    assert Enum.all?(results, &(&1.status == :ok and is_binary(&1.message)))
    assert :ok = EnvDoctor.ensure_python!()
  end

  test "an interpreter without grpcio fails with the fix named", %{bare: bare} do
    assert {:error, results} = EnvDoctor.run(python: bare)
    grpc = Enum.find(results, &(&1.name == :grpc))

    assert grpc.status == :error and grpc.message =~ "grpc" and
             grpc.message =~ "mix snakepit.setup"

    assert Enum.find(results, &(&1.name == :python_version)).status == :ok

    error = assert_raise RuntimeError, fn -> EnvDoctor.ensure_python!(python: bare) end
    assert error.message =~ "grpc" and not String.contains?(error.message, "\n")
  end

  test "a missing interpreter and unmet requirements are errors, never crashes" do
    assert {:error, [%{name: :python, status: :error, message: msg}]} =
             EnvDoctor.run(python: "/nonexistent/python", only: [:python])

    assert msg =~ "/nonexistent/python"

    Application.put_env(:snakepit, :python_packages, requirements: ["absent-pkg-zz>=1"])
    on_exit(fn -> Application.delete_env(:snakepit, :python_packages) end)

    assert {:error, [%{name: :packages, status: :error, message: m}]} =
             EnvDoctor.run(only: [:packages])

    assert m =~ "absent-pkg-zz>=1"
  end

  describe "PythonRuntime" do
    test "the interpreter's identity is stable and names path, version and platform" do
      {:ok, path} = PythonRuntime.resolve_executable()
      assert PythonRuntime.executable_path() == path
      assert {:ok, id} = PythonRuntime.runtime_identity()
      assert {:ok, ^id} = PythonRuntime.runtime_identity()
      assert {:ok, meta} = PythonRuntime.runtime_metadata()
      assert id == "#{meta.implementation}-#{meta.version}-#{meta.platform}:#{path}"
      assert meta.implementation == "cpython" and meta.version =~ ~r/^3\.\d+\.\d+/
      assert meta.strategy == :pip and meta.managed == false
      assert PythonRuntime.missing_reason() == nil
      assert PythonRuntime.runtime_env()["PYTHONPATH"] =~ "priv/python"
    end

    test "the identity changes when the interpreter behind a path changes" do
      {:ok, venv_python} = PythonRuntime.resolve_executable()
      a = venv_python |> Path.expand() |> resolve_link()
      b = "/usr/bin/python3"
      link = Path.join(System.tmp_dir!(), "snakepit-id-#{System.unique_integer([:positive])}")
      on_exit(fn -> File.rm(link) end)

      File.ln_s!(a, link)
      {:ok, first} = PythonRuntime.identity(link)
      assert {:ok, ^first} = PythonRuntime.identity(link)
      File.rm!(link)
      File.ln_s!(b, link)
      {:ok, second} = PythonRuntime.identity(link)
      # Two different interpreters on this machine (the venv's and Debian's).
      assert first != second
      assert String.ends_with?(first, ":" <> link) and String.ends_with?(second, ":" <> link)
    end

    defp resolve_link(path) do
      case File.read_link(path) do
        {:ok, target} -> resolve_link(Path.expand(target, Path.dirname(path)))
        {:error, _} -> path
      end
    end

    test "config has defaults, and managed? follows strategy and managed" do
      assert %{strategy: :pip, managed: false, runtime_dir: ".venv"} = PythonRuntime.config()
      refute PythonRuntime.managed?()
      assert PythonRuntime.managed?(%{strategy: :uv, managed: true})
      refute PythonRuntime.managed?(%{strategy: :pip, managed: true})
    end

    defmodule RecordingRunner do
      @behaviour Snakepit.Bootstrap.Runner
      def cmd(cmd, args, _opts) do
        send(self(), {:cmd, cmd, args})

        if args == ["python", "install", "9.9"],
          do: {:error, "error: no download found for 9.9\n"},
          else: :ok
      end

      def mix(_task, _args), do: :ok
    end

    test "install_managed asks uv for the interpreter, then the environment, or says why not" do
      opts = [
        uv: "/opt/uv",
        strategy: :uv,
        managed: true,
        python_version: "3.12",
        runtime_dir: "/tmp/rt"
      ]

      assert :ok = PythonRuntime.install_managed(RecordingRunner, opts)
      assert_received {:cmd, "/opt/uv", ["python", "install", "3.12"]}

      assert_received {:cmd, "/opt/uv",
                       ["venv", "--seed", "--allow-existing", "/tmp/rt", "--python", "3.12"]}

      assert {:error, reason} =
               PythonRuntime.install_managed(
                 RecordingRunner,
                 Keyword.put(opts, :python_version, "9.9")
               )

      assert reason =~ "no download found for 9.9" and reason =~ "falling back"
      refute String.contains?(reason, "\n")

      assert {:error, "config :snakepit, :python, managed: true needs python_version"} =
               PythonRuntime.install_managed(
                 RecordingRunner,
                 Keyword.put(opts, :python_version, nil)
               )
    end
  end
end
