defmodule Snakepit.Test.LanelessAdapter do
  @moduledoc """
  A `Snakepit.Adapter` whose workers are never told about a call lane (it
  drops the `--lane` flag), like a program of the user's own that speaks
  only gRPC.
  """
  @behaviour Snakepit.Adapter

  @impl true
  defdelegate executable_path, to: Snakepit.Adapters.GRPCPython

  @impl true
  defdelegate script_path, to: Snakepit.Adapters.GRPCPython

  @impl true
  defdelegate resolve_executable, to: Snakepit.Adapters.GRPCPython

  @impl true
  def script_args, do: []

  def worker_args(adapter_args, identity),
    do: Snakepit.Adapters.GRPCPython.worker_args(adapter_args, Keyword.delete(identity, :lane))
end
