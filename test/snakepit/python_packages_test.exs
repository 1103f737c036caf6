defmodule Snakepit.PythonPackagesTest do
  # Real virtualenvs in a temporary directory and real installs with pip.
  # By default nothing leaves this machine: the installs come from a
  # wheelhouse of tiny wheels built here at test time (pip with --no-index
  # --find-links, set through :env). The tests tagged :network install small
  # pure-Python packages from the package index, and uv itself; `mix test`
  # leaves them out, `make test` runs them (`--include network`).
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 300_000

  alias Snakepit.{PackageError, PythonPackages}

  @fixture "snakepit-fixture-pkg"

  setup_all do
    dir = Path.join(System.tmp_dir!(), "snakepit-pkgs-#{System.unique_integer([:positive])}")
    {_, 0} = System.cmd("python3", ["-m", "venv", dir], stderr_to_stdout: true)
    on_exit(fn -> File.rm_rf!(dir) end)
    wheels = Path.join(dir, "wheelhouse")
    File.mkdir_p!(wheels)
    for version <- ["1.0.0", "1.1.0"], do: build_wheel(wheels, "snakepit_fixture_pkg", version)

    %{
      py: Path.join([dir, "bin", "python"]),
      dir: dir,
      offline: %{
        "PIP_NO_INDEX" => "1",
        "PIP_FIND_LINKS" => wheels,
        "PIP_DISABLE_PIP_VERSION_CHECK" => "1"
      }
    }
  end

  # A pure-Python wheel (PEP 427) written directly: a zip with the module,
  # METADATA, WHEEL and a RECORD of every file's hash and size. Needs no
  # build backend and no network.
  defp build_wheel(dir, module, version) do
    dist_info = "#{module}-#{version}.dist-info"

    files = [
      {"#{module}/__init__.py", ~s(VERSION = "#{version}"\n)},
      {"#{dist_info}/METADATA",
       "Metadata-Version: 2.1\nName: #{@fixture}\nVersion: #{version}\n" <>
         "Summary: a Snakepit test fixture\n"},
      {"#{dist_info}/WHEEL",
       "Wheel-Version: 1.0\nGenerator: snakepit-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    ]

    record =
      Enum.map_join(files, fn {name, data} ->
        hash = Base.url_encode64(:crypto.hash(:sha256, data), padding: false)
        "#{name},sha256=#{hash},#{byte_size(data)}\n"
      end) <> "#{dist_info}/RECORD,,\n"

    entries =
      for {name, data} <- files ++ [{"#{dist_info}/RECORD", record}],
          do: {String.to_charlist(name), data}

    path = Path.join(dir, "#{module}-#{version}-py3-none-any.whl")
    {:ok, _} = :zip.create(String.to_charlist(path), entries)
    path
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

  test "ensure! installs what is missing, then check and lock see it (local wheelhouse)", %{
    py: py,
    dir: dir,
    offline: env
  } do
    parent = self()
    pkg = "#{@fixture}==1.0.0"

    assert :ok =
             PythonPackages.ensure!({:list, [pkg]},
               python: py,
               installer: :pip,
               env: env,
               progress: &send(parent, {:progress, &1})
             )

    # A long install says what it is doing, line by line as it goes.
    assert_received {:progress, "Installing collected packages: #{@fixture}"}
    assert_received {:progress, "Successfully installed #{@fixture}-1.0.0"}
    {out, 0} = System.cmd(py, ["-c", "import snakepit_fixture_pkg as m; print(m.VERSION)"])
    assert out == "1.0.0\n"

    assert {:ok, :all_installed} =
             PythonPackages.check_installed(["#{@fixture}~=1.0"], python: py)

    assert {:ok, {:missing, ["#{@fixture}>=1.1"]}} =
             PythonPackages.check_installed(["#{@fixture}>=1.1"], python: py)

    assert {:ok, %{@fixture => %{version: "1.0.0", hash: "sha256:" <> hex}}} =
             PythonPackages.lock_metadata([@fixture], python: py)

    assert byte_size(hex) == 64
    # Same distribution, same hash, however the name is spelled.
    assert {:ok, %{@fixture => %{hash: "sha256:" <> ^hex}}} =
             PythonPackages.lock_metadata(["Snakepit_Fixture.Pkg"], python: py)

    assert {:error, %PackageError{type: :not_installed, packages: ["absent-pkg-zz"]}} =
             PythonPackages.lock_metadata([@fixture, "absent-pkg-zz"], python: py)

    # A requirements file with comments and an include, already met: nothing runs.
    File.write!(Path.join(dir, "base.txt"), "# base\n#{pkg}  # pinned\n")
    File.write!(Path.join(dir, "req.txt"), "-r base.txt\n\n#{@fixture}>=1\n")
    before = freeze(py)
    assert :ok = PythonPackages.ensure!({:file, Path.join(dir, "req.txt")}, python: py, env: env)
    assert freeze(py) == before

    # One it does not meet: the newer wheel replaces the old one.
    assert :ok =
             PythonPackages.ensure!({:list, ["#{@fixture}>=1.1"]},
               python: py,
               installer: :pip,
               env: env,
               quiet: true
             )

    assert {:ok, %{@fixture => %{version: "1.1.0", hash: "sha256:" <> newer}}} =
             PythonPackages.lock_metadata([@fixture], python: py)

    assert newer != hex
  end

  @tag :network
  test "ensure! installs from the package index", %{py: py, dir: dir} do
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

  test "a failed install raises with the installer's output and changes nothing", %{
    py: py,
    offline: env
  } do
    before = freeze(py)

    error =
      assert_raise PackageError, fn ->
        PythonPackages.install!(["#{@fixture}==1.0.0", "snakepit-no-such-package-zz==9.9.9"],
          python: py,
          installer: :pip,
          env: env
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

  @tag :network
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
