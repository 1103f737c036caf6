defmodule Snakepit.PythonPackages do
  @moduledoc """
  Installs and inspects Python packages in the interpreter Snakepit's workers
  run (`Snakepit.PythonRuntime`), or the one given with `python:`.

      Snakepit.PythonPackages.ensure!({:list, ["numpy~=1.26", "scipy~=1.11"]})
      {:ok, :all_installed} = Snakepit.PythonPackages.check_installed(["numpy~=1.26"])
      {:ok, %{"numpy" => %{version: "1.26.4", hash: "sha256:..."}}} =
        Snakepit.PythonPackages.lock_metadata(["numpy~=1.26"])
      Snakepit.PythonPackages.ensure!({:file, "requirements.txt"}, upgrade: true)

  The interpreter needs `packaging` or pip (whose copy of it is used);
  `mix snakepit.setup` makes environments with pip in them.

  Requirements are PEP 508 strings (`"name[extra]>=1.2,<2; python_version >= '3.9'"`).
  `check_installed/2` evaluates them in the interpreter itself, with
  `packaging`'s PEP 440 rules (specifiers, pre-releases, environment
  markers), against what is installed there; it needs no network.

  Installs go through uv (`uv pip install --python <interpreter>`) or pip
  (`<interpreter> -m pip install`): `installer: :auto` (default) uses uv when
  it is on the `PATH` or in the interpreter's environment, pip otherwise.
  Both resolve every requirement before changing anything, so an install
  that fails (no such package, no matching version, a conflict) leaves the
  environment as it was.

  Defaults come from `config :snakepit, :python_packages`:

      config :snakepit, :python_packages,
        installer: :auto,                  # :auto | :uv | :pip
        timeout: 300_000,                  # ms per install
        env: %{"PIP_DISABLE_PIP_VERSION_CHECK" => "1"},
        requirements: ["numpy~=1.26"]      # what `mix snakepit.setup` installs

  Options of every function: `:python` (interpreter path), `:installer`,
  `:uv` (the uv executable), `:env`, `:timeout`; `ensure!/2` and `install!/2` also `:upgrade` and
  `:quiet`. Failures raise `Snakepit.PackageError`.
  """

  alias Snakepit.PackageError
  alias Snakepit.PythonPackages.Progress

  require Logger

  @type requirement :: String.t()
  @type requirements_spec :: {:list, [requirement()]} | {:file, Path.t()}

  @default_timeout 300_000
  @output_lines 20

  # Runs in the target interpreter: argv are requirements; prints one JSON
  # object per requirement (never raises for a bad one).
  @check_script ~S"""
  import json, sys
  try:
      from packaging.requirements import Requirement, InvalidRequirement
      from packaging.utils import canonicalize_name
  except ImportError:
      from pip._vendor.packaging.requirements import Requirement, InvalidRequirement
      from pip._vendor.packaging.utils import canonicalize_name
  from importlib import metadata
  import hashlib

  def record_hash(dist):
      data = dist.read_text("RECORD") or ""
      return "sha256:" + hashlib.sha256(data.encode()).hexdigest()

  out = []
  for text in sys.argv[1:]:
      entry = {"requirement": text}
      try:
          req = Requirement(text)
      except InvalidRequirement as exc:
          entry["status"] = "invalid"
          entry["reason"] = str(exc)
          out.append(entry)
          continue
      entry["name"] = canonicalize_name(req.name)
      if req.marker is not None and not req.marker.evaluate():
          entry["status"] = "not_applicable"
          out.append(entry)
          continue
      try:
          dist = metadata.distribution(req.name)
      except metadata.PackageNotFoundError:
          entry["status"] = "missing"
          out.append(entry)
          continue
      entry["version"] = dist.version
      entry["hash"] = record_hash(dist)
      ok = req.specifier.contains(dist.version, prereleases=True)
      entry["status"] = "ok" if ok else "mismatch"
      out.append(entry)
  print(json.dumps(out))
  """

  @doc """
  `{:ok, :all_installed}` when every requirement is installed in a version
  it allows (requirements whose markers do not apply here count as met), or
  `{:ok, {:missing, requirements}}` with those that are missing or
  mismatched. An unparsable requirement raises `Snakepit.PackageError`
  (`:invalid_requirement`).
  """
  @spec check_installed([requirement()], keyword()) ::
          {:ok, :all_installed} | {:ok, {:missing, [requirement()]}}
  def check_installed(requirements, opts \\ []) do
    missing =
      requirements
      |> inspect_requirements(opts)
      |> Enum.filter(&(&1["status"] in ["missing", "mismatch"]))
      |> Enum.map(& &1["requirement"])

    if missing == [], do: {:ok, :all_installed}, else: {:ok, {:missing, missing}}
  end

  @doc """
  Installs what `spec` asks for that is missing or mismatched (everything,
  with `upgrade: true`). `{:file, path}` reads a requirements file (comments,
  blank lines and `-r other.txt` includes are understood; other pip options
  in it are refused).
  """
  @spec ensure!(requirements_spec(), keyword()) :: :ok
  def ensure!(spec, opts \\ []) do
    requirements = requirements!(spec)

    to_install =
      if opts[:upgrade] do
        requirements
      else
        case check_installed(requirements, opts) do
          {:ok, :all_installed} -> []
          {:ok, {:missing, missing}} -> missing
        end
      end

    if to_install == [], do: :ok, else: install!(to_install, opts)
  end

  @doc """
  Installs `requirements` (prefer `ensure!/2` unless you know they are
  missing). Raises `Snakepit.PackageError` (`:install_failed`) with the
  installer's last lines when it fails.
  """
  @spec install!([requirement()], keyword()) :: :ok
  def install!(requirements, opts \\ []) when is_list(requirements) do
    # Parsed first: a bad requirement never reaches the installer.
    inspect_requirements(requirements, opts)
    python = python!(opts)
    {command, args} = installer_command(installer(opts, python), python, opts)

    args =
      args ++
        if(opts[:upgrade], do: ["--upgrade"], else: []) ++
        if(opts[:quiet], do: ["--quiet"], else: []) ++ requirements

    Logger.info(
      "snakepit: installing #{length(requirements)} Python package(s) with " <>
        "#{Path.basename(command)}: #{Enum.join(requirements, ", ")}"
    )

    case run(command, args, opts) do
      {:ok, _output} ->
        :ok

      {:error, {:timeout, output}} ->
        raise PackageError,
          type: :install_failed,
          packages: requirements,
          message:
            "installing #{Enum.join(requirements, ", ")} did not finish within #{timeout(opts)} ms",
          output: tail(output),
          suggestion: "raise :timeout (config :snakepit, :python_packages, timeout: ms)"

      {:error, {status, output}} ->
        raise PackageError,
          type: :install_failed,
          packages: requirements,
          message:
            "installing #{Enum.join(requirements, ", ")} failed (#{Path.basename(command)} exited with #{status}); " <>
              "the environment is unchanged. Installer output (last lines):\n" <> tail(output),
          output: tail(output),
          suggestion: "check the names and versions, and that the package index is reachable"
    end
  end

  @doc """
  The installed distribution for each requirement: `%{name => %{version:,
  hash:}}`, names normalized as in PEP 503, `hash` the sha256 of the
  distribution's RECORD (which lists every installed file with its own
  hash). `{:error, %Snakepit.PackageError{}}` when one is not installed.
  """
  @spec lock_metadata([requirement()], keyword()) :: {:ok, map()} | {:error, term()}
  def lock_metadata(requirements, opts \\ []) do
    entries = inspect_requirements(requirements, opts)

    case Enum.filter(entries, &(&1["status"] in ["missing", "mismatch"])) do
      [] ->
        {:ok,
         for(
           %{"status" => "ok"} = e <- entries,
           into: %{},
           do: {e["name"], %{version: e["version"], hash: e["hash"]}}
         )}

      missing ->
        packages = Enum.map(missing, & &1["requirement"])

        {:error,
         %PackageError{
           type: :not_installed,
           packages: packages,
           message: "not installed (or in another version): #{Enum.join(packages, ", ")}",
           suggestion: "run Snakepit.PythonPackages.ensure!/2 first"
         }}
    end
  end

  # -- helpers -----------------------------------------------------------------

  defp inspect_requirements(requirements, opts) do
    unless is_list(requirements) and Enum.all?(requirements, &is_binary/1) do
      raise PackageError,
        type: :invalid_requirement,
        packages: [],
        message: "requirements must be a list of strings, got: #{inspect(requirements)}"
    end

    python = python!(opts)

    entries =
      case run(python, ["-c", @check_script | requirements], Keyword.put(opts, :timeout, 60_000)) do
        {:ok, output} ->
          output |> String.split("\n", trim: true) |> List.last() |> JSON.decode!()

        {:error, {_status, output}} ->
          raise PackageError,
            type: :not_installed,
            packages: requirements,
            message: "could not inspect the packages of #{python}",
            output: tail(output)
      end

    case Enum.filter(entries, &(&1["status"] == "invalid")) do
      [] ->
        entries

      bad ->
        raise PackageError,
          type: :invalid_requirement,
          packages: Enum.map(bad, & &1["requirement"]),
          message:
            Enum.map_join(
              bad,
              "; ",
              &"invalid requirement #{inspect(&1["requirement"])}: #{&1["reason"]}"
            )
    end
  end

  defp requirements!({:list, list}) when is_list(list), do: list
  defp requirements!({:file, path}), do: read_requirements!(Path.expand(path), MapSet.new())

  defp requirements!(other) do
    raise PackageError,
      type: :invalid_requirement,
      message: "expected {:list, requirements} or {:file, path}, got: #{inspect(other)}"
  end

  defp read_requirements!(path, seen) do
    if MapSet.member?(seen, path),
      do: raise(PackageError, type: :invalid_requirement, message: "#{path} includes itself")

    text =
      case File.read(path) do
        {:ok, text} ->
          text

        {:error, reason} ->
          raise PackageError,
            type: :invalid_requirement,
            message: "cannot read #{path}: #{:file.format_error(reason)}"
      end

    text
    |> String.split("\n")
    |> Enum.map(&(&1 |> String.split(" #", parts: 2) |> hd() |> String.trim()))
    |> Enum.reject(&(&1 == "" or String.starts_with?(&1, "#")))
    |> Enum.flat_map(fn
      "-r " <> other ->
        read_requirements!(
          Path.expand(String.trim(other), Path.dirname(path)),
          MapSet.put(seen, path)
        )

      "-" <> _ = option ->
        raise PackageError,
          type: :invalid_requirement,
          message: "#{path}: pip option #{inspect(option)} is not supported here"

      requirement ->
        [requirement]
    end)
  end

  defp config, do: Snakepit.Defaults.python_packages()

  defp setting(opts, key, default),
    do: Keyword.get(opts, key, Keyword.get(config(), key, default))

  defp timeout(opts), do: setting(opts, :timeout, @default_timeout)

  defp python!(opts) do
    case opts[:python] || Snakepit.PythonRuntime.executable_path() do
      nil ->
        raise PackageError,
          type: :not_installed,
          message: "no Python interpreter: #{Snakepit.PythonRuntime.missing_reason()}",
          suggestion: "run mix snakepit.setup"

      path ->
        path
    end
  end

  defp installer(opts, python) do
    case setting(opts, :installer, :auto) do
      :auto ->
        if uv(python, opts), do: :uv, else: :pip

      :uv ->
        :uv

      :pip ->
        :pip

      other ->
        raise PackageError,
          type: :invalid_requirement,
          message: "installer must be :auto, :uv or :pip, got: #{inspect(other)}"
    end
  end

  # The :uv option, uv beside the interpreter (installed into the venv from
  # PyPI), or uv on the PATH.
  defp uv(python, opts) do
    beside = Path.join(Path.dirname(python), "uv")

    cond do
      opts[:uv] -> opts[:uv]
      File.exists?(beside) -> beside
      true -> System.find_executable("uv")
    end
  end

  defp installer_command(:uv, python, opts) do
    case uv(python, opts) do
      nil ->
        raise PackageError,
          type: :install_failed,
          message: "installer: :uv, but uv is not on the PATH or beside #{python}",
          suggestion: "#{python} -m pip install uv, or use installer: :pip"

      uv ->
        {uv, ["pip", "install", "--python", python]}
    end
  end

  defp installer_command(:pip, python, _opts),
    do: {python, ["-m", "pip", "install", "--disable-pip-version-check"]}

  # Bounded by coreutils' timeout(1), which also ends the installer's
  # process when time is up (a killed Erlang port would leave it running).
  defp run(command, args, opts) do
    env = setting(opts, :env, %{}) |> Enum.map(fn {k, v} -> {to_string(k), to_string(v)} end)
    seconds = Integer.to_string(max(div(timeout(opts) + 999, 1000), 1))

    {command, args} =
      case System.find_executable("timeout") do
        nil -> {command, args}
        timeout -> {timeout, ["--kill-after=5", seconds, command | args]}
      end

    # Its progress lines are logged as they come (opts[:progress], a
    # function of one line, replaces Logger).
    into = Progress.new(opts[:progress])

    case System.cmd(command, args, stderr_to_stdout: true, env: env, into: into) do
      {progress, 0} ->
        {:ok, Progress.output(progress)}

      {progress, status} when status in [124, 137] ->
        {:error, {:timeout, Progress.output(progress)}}

      {progress, status} ->
        {:error, {status, Progress.output(progress)}}
    end
  end

  defp tail(output) do
    output |> String.split("\n", trim: true) |> Enum.take(-@output_lines) |> Enum.join("\n")
  end
end
