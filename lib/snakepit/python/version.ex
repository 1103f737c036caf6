defmodule Snakepit.PythonVersion do
  @moduledoc """
  Detects the Python version and recommends a worker profile.

  The thread profile pays off on Python 3.13+, where a free-threaded build
  can run threads in parallel; older versions should use the process
  profile. Snakepit needs Python 3.9 or newer.

      {:ok, {3, 12, 3}} = Snakepit.PythonVersion.detect()
      :process = Snakepit.PythonVersion.recommend_profile({3, 12, 3})
      :thread = Snakepit.PythonVersion.recommend_profile({3, 13, 0})

  `detect/0` uses the first of `python3` and `python` found on `PATH`;
  `detect/1` takes the interpreter's path. The interpreter is run once,
  bounded in time. Failures are `{:error, %Snakepit.Error{}}` with
  `details.reason` one of `:python_not_found`, `:python_failed`,
  `:unrecognized_output` (or a `:timeout` category error).
  """

  alias Snakepit.Error
  alias Snakepit.Hardware.Probe

  @type version :: {non_neg_integer(), non_neg_integer(), non_neg_integer()}

  @minimum {3, 9, 0}
  @free_threading {3, 13, 0}
  @timeout_ms 10_000
  @marker "SNAKEPIT_PY"
  @version_script "import sys; print('#{@marker} %d.%d.%d' % tuple(sys.version_info[:3]))"
  @gil_script "import sysconfig; print('#{@marker}_GIL_DISABLED %s' % sysconfig.get_config_var('Py_GIL_DISABLED'))"

  @doc """
  Detects the version of the workers' interpreter (the one
  `Snakepit.PythonRuntime.executable/0` finds: configuration, `SNAKEPIT_PYTHON`,
  the uv runtime, a `.venv`, then `PATH`).
  """
  @spec detect() :: {:ok, version()} | {:error, term()}
  def detect do
    case default_python() do
      nil ->
        {:error,
         Error.validation_error(
           "no Python interpreter found for the workers (see Snakepit.PythonRuntime)",
           %{
             reason: :python_not_found
           }
         )}

      path ->
        detect(path)
    end
  end

  @doc """
  Detects the version of the Python interpreter at `path` (or a command
  name looked up on `PATH`).

  Options: `:timeout_ms` (default #{@timeout_ms}).
  """
  @spec detect(binary(), keyword()) :: {:ok, version()} | {:error, term()}
  def detect(path, opts \\ [])

  def detect(path, opts) when is_binary(path) do
    timeout = timeout!(opts)

    case run(path, @version_script, timeout) do
      {:ok, output} ->
        case Regex.run(~r/#{@marker} (\d+)\.(\d+)\.(\d+)/, output, capture: :all_but_first) do
          [major, minor, micro] ->
            {:ok, {String.to_integer(major), String.to_integer(minor), String.to_integer(micro)}}

          nil ->
            {:error,
             Error.validation_error("#{path} did not report a Python version", %{
               reason: :unrecognized_output,
               path: path,
               output: String.slice(output, 0, 500)
             })}
        end

      {:error, error} ->
        {:error, error}
    end
  end

  def detect(path, _opts) do
    raise ArgumentError, "the Python path must be a string, got: #{inspect(path)}"
  end

  @doc """
  Whether a Python version can run free-threaded (3.13 or newer). Whether a
  given interpreter actually is a free-threaded build is checked by
  `recommend_profile/0`.

      iex> Snakepit.PythonVersion.supports_free_threading?({3, 13, 0})
      true
      iex> Snakepit.PythonVersion.supports_free_threading?({3, 12, 7})
      false
  """
  @spec supports_free_threading?(version()) :: boolean()
  def supports_free_threading?(version) do
    validate_version!(version) >= @free_threading
  end

  @doc """
  Recommends a worker profile for the default Python: `:thread` only when
  it is 3.13+ and a free-threaded build (`Py_GIL_DISABLED`), otherwise
  `:process` (also when no Python can be found).
  """
  @spec recommend_profile() :: :process | :thread
  def recommend_profile do
    with path when is_binary(path) <- default_python(),
         {:ok, version} <- detect(path),
         true <- supports_free_threading?(version),
         {:ok, output} <- run(path, @gil_script, @timeout_ms),
         true <- output =~ "#{@marker}_GIL_DISABLED 1" do
      :thread
    else
      _ -> :process
    end
  end

  @doc """
  Recommends a worker profile for a Python version: `:thread` for 3.13+,
  `:process` otherwise.

      iex> Snakepit.PythonVersion.recommend_profile({3, 11, 9})
      :process
  """
  @spec recommend_profile(version()) :: :process | :thread
  def recommend_profile(version) do
    if supports_free_threading?(version), do: :thread, else: :process
  end

  @doc """
  Checks that the default Python exists and is at least 3.9.

  Returns `:ok` or `{:error, %Snakepit.Error{}}` (with `details.reason`
  `:unsupported_version` when it is too old).
  """
  @spec validate() :: :ok | {:error, term()}
  def validate do
    with {:ok, version} <- detect() do
      check_minimum(version)
    end
  end

  @doc false
  @spec check_minimum(version()) :: :ok | {:error, Error.t()}
  def check_minimum(version) do
    if validate_version!(version) >= @minimum do
      :ok
    else
      {:error,
       Error.validation_error(
         "Python #{format(@minimum)} or newer is required, found #{format(version)}",
         %{reason: :unsupported_version, version: version, minimum: @minimum}
       )}
    end
  end

  defp run(path, script, timeout) do
    runner = Probe.runner([probe_timeout_ms: timeout], :none, path)

    case Probe.run(runner, ["-c", script], timeout) do
      {:ok, output} ->
        {:ok, output}

      {:error, :not_found} ->
        {:error,
         Error.validation_error("Python interpreter not found: #{path}", %{
           reason: :python_not_found,
           path: path
         })}

      {:error, :timeout} ->
        {:error,
         Error.timeout_error("#{path} did not answer in #{timeout} ms", %{
           path: path,
           timeout_ms: timeout
         })}

      {:error, {:exit_status, status, output}} ->
        {:error,
         Error.validation_error("#{path} exited with status #{status}", %{
           reason: :python_failed,
           path: path,
           exit_status: status,
           output: String.slice(output, 0, 500)
         })}

      {:error, other} ->
        {:error,
         Error.validation_error("could not run #{path}", %{
           reason: :python_failed,
           path: path,
           error: other
         })}
    end
  end

  # The interpreter the workers would run.
  defp default_python do
    case Snakepit.PythonRuntime.executable() do
      {:ok, path} -> path
      {:error, _} -> nil
    end
  end

  defp timeout!(opts) do
    case Keyword.get(opts, :timeout_ms, @timeout_ms) do
      ms when is_integer(ms) and ms > 0 -> ms
      other -> raise ArgumentError, "invalid :timeout_ms option: #{inspect(other)}"
    end
  end

  defp validate_version!({major, minor, micro} = version)
       when is_integer(major) and major >= 0 and is_integer(minor) and minor >= 0 and
              is_integer(micro) and micro >= 0,
       do: version

  defp validate_version!(other) do
    raise ArgumentError,
          "a Python version is a {major, minor, micro} tuple, got: #{inspect(other)}"
  end

  defp format({major, minor, micro}), do: "#{major}.#{minor}.#{micro}"
end
