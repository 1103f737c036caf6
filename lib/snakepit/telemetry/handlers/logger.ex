defmodule Snakepit.Telemetry.Handlers.Logger do
  @moduledoc """
  Logs the ML-side events (`Snakepit.Telemetry.Events.all_ml_events/0`):
  circuit breaker openings and translated errors as warnings, the rest at
  debug level.
  """

  require Logger

  @id {__MODULE__, :ml_events}

  @doc "Attaches the handler (again after `detach/0`); `:ok` when it is already attached."
  @spec attach() :: :ok
  def attach do
    case Snakepit.Telemetry.attach_many(
           @id,
           Snakepit.Telemetry.Events.all_ml_events(),
           &__MODULE__.handle_event/4,
           nil
         ) do
      :ok -> :ok
      {:error, :already_exists} -> :ok
    end
  end

  @doc "Detaches the handler; `:ok` when it was not attached."
  @spec detach() :: :ok
  def detach do
    Snakepit.Telemetry.detach(@id)
    :ok
  end

  @doc false
  def handle_event(event, measurements, metadata, _config) do
    name = Enum.map_join(event, ".", &Atom.to_string/1)
    level = level(event)

    Logger.log(level, fn ->
      "#{name} #{inspect(measurements)} #{inspect(Map.drop(metadata, [:traceback, :stacktrace]))}"
    end)
  end

  defp level([:snakepit, :circuit_breaker, :opened]), do: :warning
  defp level([:snakepit, :error | _]), do: :warning
  defp level([:snakepit, :retry, :exhausted]), do: :warning
  defp level(_event), do: :debug
end
