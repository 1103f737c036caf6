defmodule Snakepit.Test.EntryScriptAdapter do
  @moduledoc "A `Snakepit.Adapter` of the user's own: another entry script, fixed arguments."
  @behaviour Snakepit.Adapter

  @impl true
  def executable_path do
    {:ok, python} = Snakepit.PythonRuntime.executable()
    python
  end

  @impl true
  def script_path, do: Path.join(Snakepit.Test.AppPool.fixtures_dir(), "custom_entry.py")

  @impl true
  def script_args, do: ["--adapter", "pool_adapters.PoolTestAdapter"]
end
