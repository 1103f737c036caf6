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

  @optional_callbacks command_timeout: 2
end
