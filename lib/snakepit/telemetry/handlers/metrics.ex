defmodule Snakepit.Telemetry.Handlers.Metrics do
  @moduledoc """
  `Telemetry.Metrics` definitions for the ML-side events: hardware
  detection, circuit breaker, translated errors and retries. Needs the
  `:telemetry_metrics` library (not a dependency of Snakepit); raises
  `Snakepit.OptionalDependencyError` without it.
  """

  @lib Telemetry.Metrics

  @doc "The definitions, for any `Telemetry.Metrics` reporter."
  @spec definitions() :: [struct()]
  def definitions, do: build(:summary, "definitions/0")

  @doc "The same, with durations as distributions (histograms), as Prometheus reporters want them."
  @spec prometheus_definitions() :: [struct()]
  def prometheus_definitions, do: build(:distribution, "prometheus_definitions/0")

  defp build(timing, function) do
    Snakepit.OptionalDependencyError.ensure!(
      @lib,
      :telemetry_metrics,
      "#{inspect(__MODULE__)}.#{function}"
    )

    ms = [unit: {:native, :millisecond}]

    [
      metric(:counter, "snakepit.hardware.detect.stop.count",
        event_name: [:snakepit, :hardware, :detect, :stop]
      ),
      metric(timing, "snakepit.hardware.detect.stop.duration", ms),
      metric(:counter, "snakepit.circuit_breaker.opened.count", tags: [:pool]),
      metric(:counter, "snakepit.circuit_breaker.call.rejected.count", tags: [:pool]),
      metric(timing, "snakepit.circuit_breaker.call.success.duration", [tags: [:pool]] ++ ms),
      metric(:counter, "snakepit.circuit_breaker.call.failure.count", tags: [:pool]),
      metric(:counter, "snakepit.error.python_exception.count", tags: [:type]),
      metric(:counter, "snakepit.error.oom.count"),
      metric(:counter, "snakepit.error.device.count"),
      metric(:counter, "snakepit.error.shape_mismatch.count"),
      metric(:sum, "snakepit.retry.attempt.attempt"),
      metric(:counter, "snakepit.retry.exhausted.count")
    ]
  end

  @doc false
  def metric(kind, name, opts \\ []), do: apply(@lib, kind, [name, opts])
end
