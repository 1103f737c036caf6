defmodule Snakepit.Adapters.GRPCPython do
  @moduledoc """
  Adapter for Python workers: runs `python -m snakepit_bridge.server` with
  the pool's `adapter_args` (`["--adapter", "my_module.MyAdapter"]`). When
  no `--adapter` is given the worker loads the bundled `ShowcaseAdapter`.
  """
  @behaviour Snakepit.Adapter

  alias Snakepit.{Defaults, PythonRuntime}

  @impl true
  def executable_path do
    case PythonRuntime.executable() do
      {:ok, path} -> path
      {:error, _} -> "python3"
    end
  end

  @impl true
  def resolve_executable, do: PythonRuntime.executable()

  @impl true
  def script_path, do: "snakepit_bridge.server"

  @impl true
  def script_args, do: []

  @impl true
  def command_timeout(_command, _args), do: Defaults.grpc_command_timeout()

  @doc """
  The argv (after the interpreter) of one worker: the server module, the
  user's adapter arguments, and the worker's identity flags.
  """
  @spec worker_args([String.t()], keyword()) :: [String.t()]
  def worker_args(adapter_args, identity) do
    adapter_args =
      if "--adapter" in adapter_args,
        do: adapter_args,
        else: ["--adapter", Defaults.default_python_adapter() | adapter_args]

    ["-m", script_path()] ++ adapter_args ++ Snakepit.Adapter.flags(identity)
  end

  @doc "`--flag value` pairs for the identity keywords that are set."
  @spec flags(keyword()) :: [String.t()]
  defdelegate flags(identity), to: Snakepit.Adapter
end
