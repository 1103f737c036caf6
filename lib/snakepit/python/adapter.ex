defmodule Snakepit.Adapter do
  @moduledoc """
  How a worker's external process is started: which runtime executable, which
  script or module, and which arguments. `Snakepit.Adapters.GRPCPython` is
  the adapter for Python workers and the default.
  """

  @doc "The runtime executable (absolute path or a name looked up on `PATH`)."
  @callback executable_path() :: String.t()

  @doc "The script the runtime runs (or a module, for `python -m`)."
  @callback script_path() :: String.t()

  @doc "Extra arguments for the script."
  @callback script_args() :: [String.t()]

  @doc "A per-command timeout in milliseconds."
  @callback command_timeout(command :: String.t(), args :: map()) :: pos_integer()

  @doc """
  The executable, resolved, or why there is none. Optional: by default
  `executable_path/0` is looked up (an absolute path must exist).
  """
  @callback resolve_executable() :: {:ok, String.t()} | {:error, term()}

  @optional_callbacks command_timeout: 2, resolve_executable: 0

  @doc """
  The executable `adapter` starts workers with: `{:ok, path}` or
  `{:error, reason}`.
  """
  @spec executable(module()) :: {:ok, String.t()} | {:error, term()}
  def executable(adapter) do
    Code.ensure_loaded(adapter)

    if function_exported?(adapter, :resolve_executable, 0) do
      adapter.resolve_executable()
    else
      path = adapter.executable_path()

      cond do
        String.contains?(path, "/") and File.regular?(path) -> {:ok, path}
        String.contains?(path, "/") -> {:error, "#{path} does not exist"}
        found = System.find_executable(path) -> {:ok, found}
        true -> {:error, "#{path} is not on the PATH"}
      end
    end
  end

  @doc """
  A worker's arguments after the executable: the adapter's script (`-m
  module` when `script_path/0` names a module rather than a file), its
  `script_args/0`, the pool's `adapter_args` and the worker's identity
  flags (`--address`, `--worker-id`, ...). The worker must speak Snakepit's
  protocol: print `SNAKEPIT_READY <address>` and serve the BridgeService
  (e.g. a script that calls `snakepit_bridge.server.main()`).
  """
  @spec argv(module(), [String.t()], keyword()) :: [String.t()]
  def argv(adapter, adapter_args, identity) do
    Code.ensure_loaded(adapter)

    if function_exported?(adapter, :worker_args, 2) do
      adapter.worker_args(adapter_args, identity)
    else
      script = adapter.script_path()
      entry = if module_name?(script), do: ["-m", script], else: [script]
      entry ++ adapter.script_args() ++ adapter_args ++ flags(identity)
    end
  end

  @doc "`--flag value` pairs for the identity keywords that are set."
  @spec flags(keyword()) :: [String.t()]
  def flags(identity),
    do:
      for({flag, value} <- identity, value != nil, do: ["--#{flag}", to_string(value)])
      |> List.flatten()

  # `snakepit_bridge.server`: a module; `priv/python/entry.py`: a file.
  defp module_name?(script),
    do: not String.contains?(script, "/") and not String.ends_with?(script, ".py")
end
