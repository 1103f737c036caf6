defmodule Snakepit.TelemetryMetrics do
  @moduledoc """
  `Telemetry.Metrics` definitions for Snakepit's own events (pool and
  worker lifecycle, calls, heartbeats, Python calls), and the reporters
  enabled in `config :snakepit, :telemetry_metrics`:

      config :snakepit, :telemetry_metrics,
        console: true,                  # Telemetry.Metrics.ConsoleReporter
        prometheus: [port: 9568]        # TelemetryMetricsPrometheus

  Needs the `:telemetry_metrics` library (not a dependency of Snakepit):
  `metrics/0` raises `Snakepit.OptionalDependencyError` without it. A
  configured reporter whose library is missing is logged and left out.
  """

  require Logger

  alias Snakepit.Telemetry.Handlers.Metrics

  @type reporter_child_spec :: Supervisor.child_spec() | {module(), keyword()}

  @doc "The metric definitions."
  @spec metrics() :: [struct()]
  def metrics do
    Snakepit.OptionalDependencyError.ensure!(
      Telemetry.Metrics,
      :telemetry_metrics,
      "Snakepit.TelemetryMetrics.metrics/0"
    )

    ms = [unit: {:native, :millisecond}]

    [
      Metrics.metric(:counter, "snakepit.pool.worker.spawned.count", tags: [:pool_name]),
      Metrics.metric(:counter, "snakepit.pool.worker.terminated.count", tags: [:pool_name]),
      Metrics.metric(:counter, "snakepit.pool.worker.startup_failed.count", tags: [:pool_name]),
      Metrics.metric(:counter, "snakepit.worker.crash.count", tags: [:pool_name]),
      Metrics.metric(:counter, "snakepit.worker.restarted.count", tags: [:pool_name]),
      Metrics.metric(:counter, "snakepit.heartbeat.missed.count", tags: [:worker_id]),
      Metrics.metric(:counter, "snakepit.heartbeat.timeout.count", tags: [:worker_id]),
      Metrics.metric(
        :summary,
        "snakepit.request.executed.duration",
        [tags: [:pool, :command]] ++ ms
      ),
      Metrics.metric(:counter, "snakepit.pool.queue.timeout.count", tags: [:pool]),
      Metrics.metric(
        :summary,
        "snakepit.python.call.stop.duration",
        [tags: [:pool_name, :tool]] ++ ms
      ),
      Metrics.metric(:counter, "snakepit.python.call.exception.count", tags: [:pool_name, :tool]),
      Metrics.metric(:last_value, "snakepit.python.memory.sampled.rss_bytes", tags: [:worker_id])
    ]
  end

  @doc "Child specs of the reporters enabled in config (none by default)."
  @spec reporter_children() :: [reporter_child_spec()]
  def reporter_children do
    config = Snakepit.Defaults.telemetry_metrics()

    [
      {Keyword.get(config, :console, false), Telemetry.Metrics.ConsoleReporter, []},
      {Keyword.get(config, :prometheus, false), TelemetryMetricsPrometheus, []}
    ]
    |> Enum.flat_map(fn
      {false, _module, _opts} ->
        []

      {setting, module, defaults} ->
        opts = if is_list(setting), do: setting, else: defaults

        if Code.ensure_loaded?(module) do
          [{module, Keyword.put(opts, :metrics, metrics())}]
        else
          Logger.warning(
            "#{inspect(module)} is configured in :telemetry_metrics but not loaded; left out"
          )

          []
        end
    end)
  end
end
