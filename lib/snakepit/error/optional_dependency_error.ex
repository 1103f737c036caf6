defmodule Snakepit.OptionalDependencyError do
  @moduledoc """
  Raised by a function that needs a library Snakepit does not depend on
  (`:telemetry_metrics`, `:opentelemetry`) when the host app does not have it.
  """
  defexception [:library, :function]

  @impl true
  def message(%{library: lib, function: fun}),
    do: "#{fun} needs the #{inspect(lib)} library, which is not loaded; add it to your app's deps"

  @doc false
  def ensure!(module, library, function) do
    unless Code.ensure_loaded?(module),
      do: raise(__MODULE__, library: library, function: function)

    :ok
  end
end
