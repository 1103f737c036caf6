defmodule Snakepit.Telemetry.Span do
  @moduledoc """
  Start/stop/exception events around a piece of work, through
  `Snakepit.Telemetry.emit/3` (so they work with or without `:telemetry`).

      Span.span([:my_app, :predict], %{model: "small"}, fn -> predict() end)

      ref = Span.start_span([:my_app, :batch], %{size: 10})
      # ...
      Span.end_span(ref, %{rows: 100})

  `event ++ [:start]` carries `system_time` and `monotonic_time`;
  `event ++ [:stop]` and `event ++ [:exception]` carry `duration` (native
  units). Exception metadata adds `kind`, `reason` and `stacktrace`.
  """

  alias Snakepit.Telemetry

  @type event :: [atom()]
  @type metadata :: map()
  @type span_ref :: %{event: event(), start_time: integer(), metadata: metadata()}

  @doc "Runs `fun` inside a span and returns its result; raises, throws and exits go on after the exception event."
  @spec span(event(), metadata(), (-> result)) :: result when result: any()
  def span(event, metadata, fun)
      when is_list(event) and is_map(metadata) and is_function(fun, 0) do
    ref = start_span(event, metadata)

    try do
      fun.()
    catch
      kind, reason ->
        end_span_exception(ref, kind, reason, __STACKTRACE__)
        :erlang.raise(kind, reason, __STACKTRACE__)
    else
      result ->
        end_span(ref)
        result
    end
  end

  @doc "Emits `event ++ [:start]` and returns the span's reference."
  @spec start_span(event(), metadata()) :: span_ref()
  def start_span(event, metadata \\ %{}) when is_list(event) and is_map(metadata) do
    start = System.monotonic_time()

    Telemetry.emit(
      event ++ [:start],
      %{system_time: System.system_time(), monotonic_time: start},
      metadata
    )

    %{event: event, start_time: start, metadata: metadata}
  end

  @doc "Emits `event ++ [:stop]` with the duration, and `additional_metadata` merged in."
  @spec end_span(span_ref(), metadata()) :: :ok
  def end_span(%{event: event, start_time: start, metadata: metadata}, additional_metadata \\ %{}) do
    Telemetry.emit(
      event ++ [:stop],
      %{duration: System.monotonic_time() - start},
      Map.merge(metadata, additional_metadata)
    )
  end

  @doc "Emits `event ++ [:exception]` with the duration, `kind`, `reason` and `stacktrace`."
  @spec end_span_exception(span_ref(), :error | :exit | :throw, term(), Exception.stacktrace()) ::
          :ok
  def end_span_exception(
        %{event: event, start_time: start, metadata: metadata},
        kind,
        reason,
        stacktrace
      ) do
    Telemetry.emit(
      event ++ [:exception],
      %{duration: System.monotonic_time() - start},
      Map.merge(metadata, %{kind: kind, reason: reason, stacktrace: stacktrace})
    )
  end
end
