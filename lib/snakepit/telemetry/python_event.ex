defmodule Snakepit.Telemetry.PythonEvent do
  @moduledoc false
  # One event from a worker's telemetry stream, as the native core hands it
  # over (strings and string-keyed maps), turned into an Elixir event:
  # known name (Naming), safe measurements and metadata (SafeMetadata),
  # `duration` in native time units, the user's event or span name in
  # `metadata.name`, the call's correlation id, and the worker's context.

  alias Snakepit.Telemetry.{Naming, SafeMetadata}

  @named [
    [:snakepit, :python, :event],
    [:snakepit, :python, :span, :start],
    [:snakepit, :python, :span, :stop],
    [:snakepit, :python, :span, :exception]
  ]

  @spec translate(map(), map()) :: {:ok, [atom()], map(), map()} | {:error, term()}
  def translate(%{parts: parts, name: name, measurements: m, metadata: md} = entry, context) do
    with {:ok, event} <- Naming.from_parts(parts),
         :ok <- check_name(event, name),
         {:ok, measurements} <- SafeMetadata.measurements(m),
         {:ok, metadata} <- SafeMetadata.sanitize(md) do
      metadata =
        metadata
        |> Map.merge(context)
        |> put_name(event, name)
        |> put_correlation(Map.get(entry, :correlation_id, ""))

      {:ok, event, native_duration(measurements), metadata}
    end
  end

  def translate(_entry, _context), do: {:error, :malformed}

  defp check_name(event, name) when event in @named do
    if is_binary(name) and name != "", do: :ok, else: {:error, :missing_name}
  end

  defp check_name(_event, _name), do: :ok

  defp put_name(metadata, event, name) when event in @named, do: Map.put(metadata, :name, name)
  defp put_name(metadata, _event, _name), do: metadata

  defp put_correlation(metadata, id) when is_binary(id) and id != "",
    do: Map.put(metadata, :correlation_id, id)

  defp put_correlation(metadata, _id), do: metadata

  # Python measures durations in nanoseconds; :telemetry handlers expect
  # native time units, as in Elixir's own spans.
  defp native_duration(%{duration: ns} = measurements) when is_number(ns),
    do: %{measurements | duration: System.convert_time_unit(round(ns), :nanosecond, :native)}

  defp native_duration(measurements), do: measurements
end
