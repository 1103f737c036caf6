defmodule Snakepit.Telemetry do
  @moduledoc """
  Minimal telemetry entry point used by the error, fault-tolerance and
  hardware modules.

  Temporary: the full `Snakepit.Telemetry` module (event catalog, handlers)
  lives on the main branch and replaces this file on merge. Only `emit/3`
  is relied upon here.
  """

  @doc """
  Emits a telemetry event through `:telemetry` when the host application has
  it loaded; otherwise does nothing. Never raises.
  """
  @spec emit([atom()], map(), map()) :: :ok
  def emit(event, measurements, metadata)
      when is_list(event) and is_map(measurements) and is_map(metadata) do
    if Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3) do
      # apply/3 keeps the compiler quiet when :telemetry is absent at build time.
      apply(:telemetry, :execute, [event, measurements, metadata])
    end

    :ok
  end
end
