defmodule Snakepit.Telemetry.OpenTelemetry do
  @moduledoc """
  Turns Snakepit's call events into OpenTelemetry spans when the host app
  runs the `:opentelemetry` SDK (not a dependency of Snakepit):

      config :snakepit, :opentelemetry, enabled: true

  `setup/0` then attaches handlers that record, for each finished event of
  `@spanned`, a span named after the event (`"snakepit.request.executed"`,
  `"snakepit.python.call.stop"`, ...) with the call's duration, its
  `correlation_id`, worker, pool and tool as attributes, and status error
  for failures. Spans go wherever the SDK's exporter is configured to send
  them (nowhere by default). Python-side spans (children of the call's W3C
  `traceparent`) are made in the worker itself when it has
  `opentelemetry-api`.

  Without the config, or without the SDK loaded, `setup/0` does nothing and
  returns `:ok` (logging once when enabled but the SDK is missing).
  """

  require Logger

  @id {__MODULE__, :spans}
  @spanned [
    [:snakepit, :request, :executed],
    [:snakepit, :grpc_worker, :execute, :stop],
    [:snakepit, :grpc_worker, :stream, :stop],
    [:snakepit, :python, :call, :stop],
    [:snakepit, :python, :call, :exception],
    [:snakepit, :python, :span, :stop],
    [:snakepit, :python, :span, :exception]
  ]
  @attributes [
    :correlation_id,
    :worker_id,
    :pool_name,
    :pool,
    :tool,
    :command,
    :name,
    :error_type
  ]

  @doc "Attaches the span handlers when enabled and the SDK is loaded; `:ok` either way."
  @spec setup() :: :ok
  def setup do
    config = Application.get_env(:snakepit, :opentelemetry, [])

    cond do
      not Keyword.get(config, :enabled, false) ->
        :ok

      not Code.ensure_loaded?(:otel_tracer) ->
        Logger.warning(
          "config :snakepit, :opentelemetry is enabled but the :opentelemetry SDK is not loaded; no spans"
        )

        :ok

      true ->
        Snakepit.Telemetry.detach(@id)
        :ok = Snakepit.Telemetry.attach_many(@id, @spanned, &__MODULE__.handle_event/4, nil)
    end
  end

  @doc "The events recorded as spans."
  @spec spanned_events() :: [[atom()]]
  def spanned_events, do: @spanned

  @doc false
  def handle_event(event, measurements, metadata, _config) do
    duration = Map.get(measurements, :duration, 0)
    finish = System.monotonic_time()
    tracer = apply(:opentelemetry, :get_tracer, [:snakepit])

    attributes =
      for key <- @attributes, (value = Map.get(metadata, key)) != nil, into: %{} do
        {"snakepit." <> Atom.to_string(key), to_attribute(value)}
      end

    span =
      apply(:otel_tracer, :start_span, [
        tracer,
        Enum.map_join(event, ".", &Atom.to_string/1),
        %{start_time: finish - duration, attributes: attributes}
      ])

    if List.last(event) == :exception or match?({:error, _}, Map.get(metadata, :result)) do
      apply(:otel_span, :set_status, [span, apply(:opentelemetry, :status, [:error, ""])])
    end

    apply(:otel_span, :end_span, [span, finish])
  end

  defp to_attribute(value) when is_binary(value) or is_number(value) or is_boolean(value),
    do: value

  defp to_attribute(value) when is_atom(value), do: Atom.to_string(value)
  defp to_attribute(value), do: inspect(value)
end
