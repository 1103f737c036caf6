defmodule Snakepit.Telemetry.Control do
  @moduledoc """
  Builds the control messages that change a worker's telemetry while it
  runs; `Snakepit.Telemetry.GrpcStream` sends them (`toggle/2`,
  `update_sampling/3`, `update_filter/2` there take a worker id or `:all`).
  """

  alias Snakepit.Bridge.{
    TelemetryControl,
    TelemetryEventFilter,
    TelemetrySamplingUpdate,
    TelemetryToggle
  }

  @doc """
  Telemetry on or off.

      iex> Snakepit.Telemetry.Control.toggle(true)
      %Snakepit.Bridge.TelemetryControl{
        control: {:toggle, %Snakepit.Bridge.TelemetryToggle{enabled: true}}
      }
  """
  @spec toggle(boolean()) :: TelemetryControl.t()
  def toggle(enabled) when is_boolean(enabled),
    do: %TelemetryControl{control: {:toggle, %TelemetryToggle{enabled: enabled}}}

  @doc """
  Keep the share `rate` (0.0 to 1.0) of the events matching `patterns`
  (globs over dotted names; `[]`: all events).

      iex> Snakepit.Telemetry.Control.sampling(0.1, ["python.call.*"])
      %Snakepit.Bridge.TelemetryControl{
        control: {:sampling, %Snakepit.Bridge.TelemetrySamplingUpdate{
          sampling_rate: 0.1,
          event_patterns: ["python.call.*"]
        }}
      }
  """
  @spec sampling(number(), [String.t()]) :: TelemetryControl.t()
  def sampling(rate, patterns \\ []) when is_number(rate) and rate >= 0 and rate <= 1 do
    strings!(patterns, "patterns")

    %TelemetryControl{
      control:
        {:sampling, %TelemetrySamplingUpdate{sampling_rate: rate / 1, event_patterns: patterns}}
    }
  end

  @doc """
  Send only the events matching `allow:` (when given), never those matching
  `deny:`.

      iex> Snakepit.Telemetry.Control.filter(deny: ["python.memory.sampled"])
      %Snakepit.Bridge.TelemetryControl{
        control: {:filter, %Snakepit.Bridge.TelemetryEventFilter{
          allow: [],
          deny: ["python.memory.sampled"]
        }}
      }
  """
  @spec filter(keyword()) :: TelemetryControl.t()
  def filter(opts \\ []) when is_list(opts) do
    allow = Keyword.get(opts, :allow, [])
    deny = Keyword.get(opts, :deny, [])
    strings!(allow, "allow")
    strings!(deny, "deny")
    %TelemetryControl{control: {:filter, %TelemetryEventFilter{allow: allow, deny: deny}}}
  end

  @doc false
  # The tuple the native core sends as the protobuf message.
  def to_native(%TelemetryControl{control: {:toggle, %TelemetryToggle{enabled: on}}}),
    do: {:toggle, on}

  def to_native(%TelemetryControl{control: {:sampling, %TelemetrySamplingUpdate{} = s}}),
    do: {:sampling, s.sampling_rate / 1, s.event_patterns}

  def to_native(%TelemetryControl{control: {:filter, %TelemetryEventFilter{} = f}}),
    do: {:filter, f.allow, f.deny}

  defp strings!(list, what) do
    unless is_list(list) and Enum.all?(list, &is_binary/1) do
      raise ArgumentError, "#{what} must be a list of strings, got: #{inspect(list)}"
    end
  end
end
