defmodule Snakepit.PythonPackagesTest do
  # Real virtualenvs in a temporary directory, real installs of small
  # pure-Python packages from the package index, with pip and uv.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 300_000

  alias Snakepit.{PackageError, PythonPackages}

  setup_all do
    dir = Path.join(System.tmp_dir!(), "snakepit-pkgs-#{System.unique_integer([:positive])}")
    {_, 0} = System.cmd("python3", ["-m", "venv", dir], stderr_to_stdout: true)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{py: Path.join([dir, "bin", "python"]), dir: dir}
  end

  defp freeze(python) do
    {out, 0} = System.cmd(python, ["-m", "pip", "freeze", "--all"])
    out
  end

  test "check_installed applies PEP 440 specifiers and markers in the interpreter itself", %{
    py: py
  } do
    assert {:ok, :all_installed} =
             PythonPackages.check_installed(["pip>=1", "PIP>=1.0,!=0.1"], python: py)

    assert {:ok, {:missing, ["pip<1"]}} =
             PythonPackages.check_installed(["pip>=1", "pip<1"], python: py)

    assert {:ok, {:missing, ["absent-pkg-zz==1.0"]}} =
             PythonPackages.check_installed(
               ["absent-pkg-zz==1.0", "nothing-here; python_version < '3'"],
               python: py
             )
  end

  test "ensure! installs what is missing, then check and lock see it", %{py: py, dir: dir} do
    parent = self()

    assert :ok =
             PythonPackages.ensure!({:list, ["six==1.16.0"]},
               python: py,
               installer: :pip,
               progress: &send(parent, {:progress, &1})
             )

    # A long install says what it is doing, line by line as it goes.
    assert_received {:progress, "Collecting six==1.16.0" <> _}
    assert_received {:progress, "Successfully installed six-1.16.0"}

    assert {:ok, :all_installed} = PythonPackages.check_installed(["six~=1.16"], python: py)

    assert {:ok, {:missing, ["six>=1.17"]}} =
             PythonPackages.check_installed(["six>=1.17"], python: py)

    assert {:ok, %{"six" => %{version: "1.16.0", hash: "sha256:" <> hex}}} =
             PythonPackages.lock_metadata(["six"], python: py)

    assert byte_size(hex) == 64
    # Same distribution, same hash.
    assert {:ok, %{"six" => %{hash: "sha256:" <> ^hex}}} =
             PythonPackages.lock_metadata(["Six"], python: py)

    assert {:error, %PackageError{type: :not_installed, packages: ["absent-pkg-zz"]}} =
             PythonPackages.lock_metadata(["six", "absent-pkg-zz"], python: py)

    # A requirements file with comments and an include.
    File.write!(Path.join(dir, "base.txt"), "# base\nsix==1.16.0  # pinned\n")
    File.write!(Path.join(dir, "req.txt"), "-r base.txt\n\nsix>=1\n")
    before = freeze(py)
    assert :ok = PythonPackages.ensure!({:file, Path.join(dir, "req.txt")}, python: py)
    assert freeze(py) == before
  end

  test "a failed install raises with the installer's output and changes nothing", %{py: py} do
    before = freeze(py)

    error =
      assert_raise PackageError, fn ->
        PythonPackages.install!(["six==1.16.0", "snakepit-no-such-package-zz==9.9.9"],
          python: py,
          installer: :pip
        )
      end

    assert error.type == :install_failed
    assert "snakepit-no-such-package-zz==9.9.9" in error.packages
    assert error.output =~ "snakepit-no-such-package-zz"
    assert Exception.message(error) =~ "environment is unchanged"
    assert freeze(py) == before
  end

  test "bad requirements and options are refused before anything runs", %{py: py} do
    assert %PackageError{type: :invalid_requirement} =
             catch_error(PythonPackages.check_installed(["six["], python: py))

    assert %PackageError{type: :invalid_requirement} =
             catch_error(PythonPackages.ensure!({:nope, []}, python: py))

    assert %PackageError{type: :invalid_requirement} =
             catch_error(PythonPackages.install!(["six"], python: py, installer: :conda))
  end

  test "installer: :uv installs with uv (itself from the package index)", %{py: py, dir: dir} do
    :ok = PythonPackages.ensure!({:list, ["uv"]}, python: py, installer: :pip, quiet: true)
    assert File.exists?(Path.join([dir, "bin", "uv"]))
    assert :ok = PythonPackages.install!(["idna==3.7"], python: py, installer: :uv)

    assert {:ok, %{"idna" => %{version: "3.7"}}} =
             PythonPackages.lock_metadata(["idna"], python: py)

    # :auto now finds uv beside the interpreter.
    assert :ok = PythonPackages.ensure!({:list, ["idna==3.6"]}, python: py)

    assert {:ok, %{"idna" => %{version: "3.6"}}} =
             PythonPackages.lock_metadata(["idna"], python: py)
  end
end
