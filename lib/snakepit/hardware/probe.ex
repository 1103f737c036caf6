defmodule Snakepit.Hardware.Probe do
  @moduledoc false
  # Bounded access to the OS for the hardware detectors.
  #
  # A runner is a function `(args :: [String.t()]) -> {:ok, output} | {:error, reason}`.
  # Detectors take runners and file paths as options so tests can feed them
  # fixtures; by default they run the real executable. Whatever the runner
  # does (hang, raise, return garbage), `run/3` answers within the timeout
  # with `{:ok, binary}` or `{:error, reason}`.

  @default_timeout_ms 2_000

  @type runner :: ([String.t()] -> {:ok, String.t()} | {:error, term()})

  @spec default_timeout() :: pos_integer()
  def default_timeout, do: @default_timeout_ms

  @doc false
  @spec timeout(keyword()) :: pos_integer()
  def timeout(opts) do
    case Keyword.get(opts, :probe_timeout_ms, @default_timeout_ms) do
      ms when is_integer(ms) and ms > 0 ->
        ms

      other ->
        raise ArgumentError,
              "invalid :probe_timeout_ms option: expected a positive integer, got: #{inspect(other)}"
    end
  end

  @doc false
  # The runner given under `key`, or one that runs `executable`.
  @spec runner(keyword(), atom(), String.t()) :: runner()
  def runner(opts, key, executable) do
    case Keyword.get(opts, key) do
      nil ->
        timeout = timeout(opts)
        fn args -> system_cmd(executable, args, timeout) end

      fun when is_function(fun, 1) ->
        fun

      other ->
        raise ArgumentError,
              "invalid #{inspect(key)} option: expected a function of one argument (the args), " <>
                "got: #{inspect(other)}"
    end
  end

  @doc false
  @spec run(runner(), [String.t()], pos_integer()) :: {:ok, String.t()} | {:error, term()}
  def run(runner, args, timeout) do
    task =
      Task.async(fn ->
        try do
          runner.(args)
        catch
          kind, reason -> {:error, {:probe_crashed, kind, reason}}
        end
      end)

    case Task.yield(task, timeout) || Task.shutdown(task, :brutal_kill) do
      {:ok, {:ok, output}} when is_binary(output) -> {:ok, output}
      {:ok, {:error, _} = error} -> error
      {:ok, other} -> {:error, {:bad_probe_result, other}}
      {:exit, reason} -> {:error, {:probe_crashed, :exit, reason}}
      nil -> {:error, :timeout}
    end
  end

  @doc false
  @spec read(String.t() | nil) :: {:ok, String.t()} | {:error, term()}
  def read(nil), do: {:error, :enoent}

  def read(path) when is_binary(path) do
    File.read(path)
  end

  def read(other), do: {:error, {:invalid_path, other}}

  @doc false
  @spec path_option(keyword(), atom(), String.t()) :: String.t()
  def path_option(opts, key, default) do
    case Keyword.get(opts, key, default) do
      path when is_binary(path) ->
        path

      other ->
        raise ArgumentError,
              "invalid #{inspect(key)} option: expected a path, got: #{inspect(other)}"
    end
  end

  @doc false
  @spec paths_option(keyword(), atom(), [String.t()]) :: [String.t()]
  def paths_option(opts, key, default) do
    case Keyword.get(opts, key, default) do
      paths when is_list(paths) ->
        if Enum.all?(paths, &is_binary/1), do: paths, else: bad_paths!(key, paths)

      other ->
        bad_paths!(key, other)
    end
  end

  defp bad_paths!(key, value) do
    raise ArgumentError,
          "invalid #{inspect(key)} option: expected a list of paths, got: #{inspect(value)}"
  end

  # Runs an executable found on PATH through the native core, which kills
  # its whole group when it overruns.
  defp system_cmd(executable, args, timeout_ms) do
    Snakepit.OS.Command.run(executable, args, timeout_ms: timeout_ms, env: [{"LC_ALL", "C"}])
  end
end
