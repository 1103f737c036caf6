defmodule Snakepit.Telemetry.OpenTelemetry do
  @moduledoc """
  Turns Snakepit's call events into OpenTelemetry spans when the host app
  runs the `:opentelemetry` SDK (not a dependency of Snakepit):

      config :snakepit, :opentelemetry, enabled: true
      # or, as older guides write it:
      config :snakepit, :opentelemetry, %{enabled: true}

  At application start (`setup/0`) Snakepit then attaches handlers that record, for each finished event of
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

  @doc """
  Attaches the span handlers when enabled and the SDK is loaded; `:ok`
  either way. Called at application start, so the configuration alone is
  enough; calling it again re-reads it.
  """
  @spec setup() :: :ok
  def setup do
    case config() do
      {:ok, %{enabled: true}} ->
        if Code.ensure_loaded?(:otel_tracer) do
          Snakepit.Telemetry.detach(@id)
          :ok = Snakepit.Telemetry.attach_many(@id, @spanned, &__MODULE__.handle_event/4, nil)
        else
          Logger.warning(
            "config :snakepit, :opentelemetry is enabled but the :opentelemetry SDK is not loaded; no spans"
          )
        end

      {:ok, _off} ->
        Snakepit.Telemetry.detach(@id)

      {:error, message} ->
        Logger.warning("config :snakepit, :opentelemetry ignored: #{message}")
    end

    :ok
  end

  @doc """
  The `:opentelemetry` configuration as a map: given as a keyword list or a
  map (both documented forms), `enabled` a boolean (default false).
  """
  @spec config() :: {:ok, %{enabled: boolean()}} | {:error, String.t()}
  def config do
    case Snakepit.Defaults.opentelemetry() do
      map when is_map(map) ->
        check(map)

      list when is_list(list) ->
        if Keyword.keyword?(list), do: check(Map.new(list)), else: bad(list)

      other ->
        bad(other)
    end
  end

  defp check(config) do
    case Map.get(config, :enabled, false) do
      enabled when is_boolean(enabled) -> {:ok, Map.put(config, :enabled, enabled)}
      other -> {:error, "enabled must be true or false, got: #{inspect(other)}"}
    end
  end

  defp bad(value),
    do:
      {:error,
       "expected a keyword list or a map such as %{enabled: true}, got: #{inspect(value)}"}

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

    if List.last(event) == :exception or match?({:error, _}, Map.get(metadata, :result)) or
         Map.get(metadata, :success) == false do
      apply(:otel_span, :set_status, [span, apply(:opentelemetry, :status, [:error, ""])])
    end

    apply(:otel_span, :end_span, [span, finish])
  end

  defp to_attribute(value) when is_binary(value) or is_number(value) or is_boolean(value),
    do: value

  defp to_attribute(value) when is_atom(value), do: Atom.to_string(value)
  defp to_attribute(value), do: inspect(value)
end
