defmodule Snakepit.PythonVersionTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Error, PythonVersion}

  doctest PythonVersion

  setup do
    dir =
      Path.join(
        System.tmp_dir!(),
        "snakepit_python_version_#{System.unique_integer([:positive])}"
      )

    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    %{tmp_dir: dir}
  end

  # A stand-in "interpreter": a shell script with the given body.
  defp fake_python(dir, name, body) do
    path = Path.join(dir, name)
    File.write!(path, "#!/bin/sh\n" <> body <> "\n")
    File.chmod!(path, 0o755)
    path
  end

  test "detects a version from what the interpreter prints", %{tmp_dir: dir} do
    path = fake_python(dir, "py313", ~s(echo "SNAKEPIT_PY 3.13.1"))
    assert PythonVersion.detect(path) == {:ok, {3, 13, 1}}
  end

  test "missing interpreter", %{tmp_dir: dir} do
    assert {:error, %Error{category: :validation, details: %{reason: :python_not_found}}} =
             PythonVersion.detect(Path.join(dir, "nope"))
  end

  test "interpreter that fails or prints garbage", %{tmp_dir: dir} do
    failing = fake_python(dir, "failing", "echo broken >&2; exit 3")

    assert {:error,
            %Error{details: %{reason: :python_failed, exit_status: 3, output: "broken\n"}}} =
             PythonVersion.detect(failing)

    garbage = fake_python(dir, "garbage", "echo 'Python 3.x maybe'")

    assert {:error, %Error{details: %{reason: :unrecognized_output}}} =
             PythonVersion.detect(garbage)
  end

  test "interpreter that hangs gives a timeout error", %{tmp_dir: dir} do
    hanging = fake_python(dir, "hanging", "sleep 30")
    assert {:error, %Error{category: :timeout}} = PythonVersion.detect(hanging, timeout_ms: 100)
  end

  test "this machine's python3, when present" do
    case System.find_executable("python3") do
      nil ->
        assert {:error, %Error{}} = PythonVersion.detect("python3")

      path ->
        {out, 0} = System.cmd(path, ["--version"], stderr_to_stdout: true)
        [major, minor, micro] = Regex.run(~r/(\d+)\.(\d+)\.(\d+)/, out, capture: :all_but_first)
        expected = {String.to_integer(major), String.to_integer(minor), String.to_integer(micro)}
        assert PythonVersion.detect(path) == {:ok, expected}
        assert PythonVersion.detect() == {:ok, expected}
        assert PythonVersion.validate() == PythonVersion.check_minimum(expected)
        assert PythonVersion.recommend_profile() in [:process, :thread]
        if expected < {3, 13, 0}, do: assert(PythonVersion.recommend_profile() == :process)
    end
  end

  test "free threading and profile recommendation by version" do
    assert PythonVersion.supports_free_threading?({3, 14, 0})
    assert PythonVersion.supports_free_threading?({4, 0, 0})
    refute PythonVersion.supports_free_threading?({3, 12, 99})
    assert PythonVersion.recommend_profile({3, 13, 2}) == :thread
    assert PythonVersion.recommend_profile({3, 9, 18}) == :process
  end

  test "minimum version" do
    assert PythonVersion.check_minimum({3, 9, 0}) == :ok

    assert {:error, %Error{details: %{reason: :unsupported_version, version: {3, 8, 18}}}} =
             PythonVersion.check_minimum({3, 8, 18})
  end

  test "bad arguments raise ArgumentError" do
    assert_raise ArgumentError, ~r/version/, fn ->
      PythonVersion.supports_free_threading?("3.13")
    end

    assert_raise ArgumentError, ~r/version/, fn -> PythonVersion.recommend_profile({3, 13}) end
    assert_raise ArgumentError, ~r/path/, fn -> PythonVersion.detect(:python3) end

    assert_raise ArgumentError, ~r/:timeout_ms/, fn ->
      PythonVersion.detect("python3", timeout_ms: 0)
    end
  end
end
