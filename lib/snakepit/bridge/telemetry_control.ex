defmodule Snakepit.Bridge.TelemetryControl do
  @moduledoc """
  A control message for a worker's telemetry, as in `proto/` (the
  `TelemetryControl` message): `control` is `{:toggle, %TelemetryToggle{}}`,
  `{:sampling, %TelemetrySamplingUpdate{}}` or `{:filter,
  %TelemetryEventFilter{}}`. Built by `Snakepit.Telemetry.Control`, sent by
  `Snakepit.Telemetry.GrpcStream`.
  """
  alias Snakepit.Bridge.{TelemetryEventFilter, TelemetrySamplingUpdate, TelemetryToggle}

  defstruct control: nil

  @type t :: %__MODULE__{
          control:
            {:toggle, TelemetryToggle.t()}
            | {:sampling, TelemetrySamplingUpdate.t()}
            | {:filter, TelemetryEventFilter.t()}
            | nil
        }
end

defmodule Snakepit.Bridge.TelemetryToggle do
  @moduledoc "Telemetry on or off in a worker (`TelemetryToggle` in `proto/`)."
  defstruct enabled: true
  @type t :: %__MODULE__{enabled: boolean()}
end

defmodule Snakepit.Bridge.TelemetrySamplingUpdate do
  @moduledoc """
  The share of events a worker keeps (`TelemetrySamplingUpdate` in
  `proto/`): `sampling_rate` from 0.0 to 1.0, applied to the events matching
  `event_patterns` (globs over dotted names such as `"python.call.*"`; empty:
  all events).
  """
  defstruct sampling_rate: 1.0, event_patterns: []
  @type t :: %__MODULE__{sampling_rate: float(), event_patterns: [String.t()]}
end

defmodule Snakepit.Bridge.TelemetryEventFilter do
  @moduledoc """
  Which events a worker sends (`TelemetryEventFilter` in `proto/`): with
  `allow` non-empty only matching events, never those matching `deny`
  (globs over dotted names such as `"python.memory.sampled"`).
  """
  defstruct allow: [], deny: []
  @type t :: %__MODULE__{allow: [String.t()], deny: [String.t()]}
end
