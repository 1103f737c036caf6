defmodule Snakepit.Telemetry.Events do
  @moduledoc """
  The ML-side events (hardware detection, circuit breaker, exception
  translation, retries, GPU profiling) with the schema of their measurements and metadata.
  All of them are in `Snakepit.Telemetry.events/0` too.
  """

  @type event :: [atom()]
  @type measurement_type :: :integer | :float | :monotonic_time | :system_time
  @type metadata_type :: :string | :atom | :integer | :map | :list | :any
  @type schema :: %{
          measurements: %{required(atom()) => measurement_type()},
          metadata: %{required(atom()) => metadata_type()}
        }

  @schemas %{
    [:snakepit, :hardware, :cache, :hit] => {%{}, %{key: :atom}},
    [:snakepit, :hardware, :cache, :miss] => {%{}, %{key: :atom}},
    [:snakepit, :hardware, :detect, :start] => {%{system_time: :system_time}, %{}},
    [:snakepit, :hardware, :detect, :stop] =>
      {%{duration: :monotonic_time}, %{accelerator: :atom, platform: :string}},
    [:snakepit, :hardware, :select, :start] =>
      {%{system_time: :system_time}, %{preference: :any}},
    [:snakepit, :hardware, :select, :stop] =>
      {%{duration: :monotonic_time}, %{device: :any, success: :atom}},
    [:snakepit, :circuit_breaker, :call, :allowed] => {%{}, %{pool: :any}},
    [:snakepit, :circuit_breaker, :call, :rejected] => {%{}, %{pool: :any}},
    [:snakepit, :circuit_breaker, :call, :success] =>
      {%{duration: :monotonic_time}, %{pool: :any}},
    [:snakepit, :circuit_breaker, :call, :failure] =>
      {%{duration: :monotonic_time}, %{pool: :any, error: :any}},
    [:snakepit, :circuit_breaker, :opened] =>
      {%{failure_count: :integer}, %{pool: :any, reason: :any}},
    [:snakepit, :circuit_breaker, :half_open] => {%{}, %{pool: :any}},
    [:snakepit, :circuit_breaker, :closed] => {%{}, %{pool: :any}},
    [:snakepit, :error, :python_exception] =>
      {%{}, %{type: :string, message: :string, traceback: :string}},
    [:snakepit, :error, :device] =>
      {%{}, %{expected_device: :any, actual_device: :any, operation: :any}},
    [:snakepit, :error, :oom] =>
      {%{requested_bytes: :integer, available_bytes: :integer}, %{device: :any, operation: :any}},
    [:snakepit, :error, :shape_mismatch] =>
      {%{}, %{expected: :list, got: :list, dimension: :integer}},
    [:snakepit, :retry, :attempt] => {%{attempt: :integer, delay_ms: :integer}, %{}},
    [:snakepit, :retry, :backoff] => {%{delay_ms: :integer}, %{attempt: :integer}},
    [:snakepit, :retry, :success] => {%{attempts: :integer, total_duration: :integer}, %{}},
    [:snakepit, :retry, :exhausted] => {%{attempts: :integer, total_duration: :integer}, %{}},
    [:snakepit, :gpu, :memory, :sampled] =>
      {%{used_mb: :integer, total_mb: :integer, free_mb: :integer},
       %{device: :any, name: :string}},
    [:snakepit, :gpu, :utilization, :sampled] =>
      {%{gpu_percent: :integer, memory_percent: :integer}, %{device: :any, name: :string}},
    [:snakepit, :gpu, :temperature, :sampled] =>
      {%{celsius: :integer}, %{device: :any, name: :string}},
    [:snakepit, :gpu, :power, :sampled] => {%{watts: :float}, %{device: :any, name: :string}}
  }

  defp with_prefix(prefix),
    do: Snakepit.Telemetry.runtime_events() |> Enum.filter(&:lists.prefix(prefix, &1))

  @doc "Hardware detection and device selection events."
  @spec hardware_events() :: [event()]
  def hardware_events, do: Snakepit.Telemetry.hardware_events()

  @doc "Circuit breaker events."
  @spec circuit_breaker_events() :: [event()]
  def circuit_breaker_events, do: with_prefix([:snakepit, :circuit_breaker])

  @doc "Exception translation events."
  @spec exception_events() :: [event()]
  def exception_events, do: with_prefix([:snakepit, :error])

  @doc "Retry and backoff events."
  @spec retry_events() :: [event()]
  def retry_events, do: with_prefix([:snakepit, :retry])

  @doc "GPU profiler events (`Snakepit.Telemetry.GPUProfiler`)."
  @spec gpu_profiler_events() :: [event()]
  def gpu_profiler_events, do: with_prefix([:snakepit, :gpu])

  @doc "All of the above."
  @spec all_ml_events() :: [event()]
  def all_ml_events do
    hardware_events() ++
      circuit_breaker_events() ++ exception_events() ++ gpu_profiler_events() ++ retry_events()
  end

  @doc """
  The schema of `event`, or nil for an event not listed here.

      iex> Snakepit.Telemetry.Events.event_schema([:snakepit, :circuit_breaker, :opened])
      %{measurements: %{failure_count: :integer}, metadata: %{pool: :any, reason: :any}}
      iex> Snakepit.Telemetry.Events.event_schema([:nope])
      nil
  """
  @spec event_schema(event()) :: schema() | nil
  def event_schema(event) do
    case Map.fetch(@schemas, event) do
      {:ok, {measurements, metadata}} -> %{measurements: measurements, metadata: metadata}
      :error -> nil
    end
  end
end
