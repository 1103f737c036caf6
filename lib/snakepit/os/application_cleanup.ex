defmodule Snakepit.Pool.ApplicationCleanup do
  @moduledoc """
  The last line of defence at shutdown. Started before the pools, so it is
  stopped after them: by then every worker should have exited gracefully,
  and whatever of this run is still in the process table (found by run id)
  gets a bounded SIGTERM → SIGKILL pass (`cleanup_on_stop_timeout_ms`
  between the two).
  """
  use GenServer

  require Logger

  @doc false
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @impl true
  def init(_opts) do
    Process.flag(:trap_exit, true)
    {:ok, nil}
  end

  @impl true
  def terminate(_reason, _state) do
    timeout = Snakepit.Defaults.cleanup_on_stop_timeout_ms()

    case Snakepit.RuntimeCleanup.cleanup_current_run(timeout_ms: timeout) do
      :ok ->
        :ok

      {:timeout, pids} ->
        Logger.error("Snakepit could not stop worker processes #{inspect(pids)}")
    end
  end
end
