defmodule Snakepit.Telemetry.GPUProfiler do
  @moduledoc """
  Samples NVIDIA GPU memory, utilization, temperature and power every
  `interval_ms` and emits them as telemetry events, one set per GPU.

  Not started by Snakepit; add it to your supervision tree where GPUs
  matter:

      children = [{Snakepit.Telemetry.GPUProfiler, interval_ms: 10_000}]

  Each sample asks `nvidia-smi` once (`--query-gpu=index,name,memory.used,
  memory.total,memory.free,utilization.gpu,utilization.memory,temperature.gpu,
  power.draw --format=csv,noheader,nounits`, bounded by a timeout, through
  the native core's process runner) and emits, per GPU, with metadata
  `%{device: {:cuda, index}, name: name}`:

  | event | measurements |
  |---|---|
  | `[:snakepit, :gpu, :memory, :sampled]` | `used_mb`, `total_mb`, `free_mb` |
  | `[:snakepit, :gpu, :utilization, :sampled]` | `gpu_percent`, `memory_percent` |
  | `[:snakepit, :gpu, :temperature, :sampled]` | `celsius` |
  | `[:snakepit, :gpu, :power, :sampled]` | `watts` |

  A value the GPU does not report (`[N/A]`, `[Not Supported]`) is left out,
  and an event with none of its values is not emitted. Without `nvidia-smi`
  or a GPU, a sample emits nothing and counts as an error in
  `get_stats/1`; `sample_now/1` returns `{:error, :no_gpu}`.

  ## Options

    * `:interval_ms` - sampling interval (default 5000)
    * `:enabled` - whether to sample from the start (default true)
    * `:name` - the server's name (default `Snakepit.Telemetry.GPUProfiler`;
      `nil` for none)
    * `:nvidia_smi` - a runner standing in for `nvidia-smi`: a function of
      the argument list returning `{:ok, output}` or `{:error, reason}`
      (tests use fixtures)
    * `:probe_timeout_ms` - bound on each `nvidia-smi` run (default 2000)
  """
  use GenServer

  alias Snakepit.Hardware.Probe
  alias Snakepit.Telemetry

  @fields "index,name,memory.used,memory.total,memory.free,utilization.gpu," <>
            "utilization.memory,temperature.gpu,power.draw"
  @default_interval_ms 5_000

  @type state :: %{
          interval_ms: pos_integer(),
          enabled: boolean(),
          sample_count: non_neg_integer(),
          last_sample_time: integer() | nil,
          timer_ref: reference() | nil,
          devices: [Snakepit.Hardware.Selector.device()],
          error_count: non_neg_integer(),
          last_error: term(),
          runner: Probe.runner(),
          probe_timeout_ms: pos_integer()
        }

  @type sample :: %{
          index: non_neg_integer(),
          name: String.t(),
          memory_used_mb: number() | nil,
          memory_total_mb: number() | nil,
          memory_free_mb: number() | nil,
          gpu_percent: number() | nil,
          memory_percent: number() | nil,
          celsius: number() | nil,
          watts: number() | nil
        }

  @doc "Starts the GPU profiler (options in the module doc)."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    with {:ok, config} <- config(opts) do
      case Keyword.get(opts, :name, __MODULE__) do
        nil -> GenServer.start_link(__MODULE__, config)
        name -> GenServer.start_link(__MODULE__, config, name: name)
      end
    end
  end

  @doc "Enables periodic sampling (the next sample is taken at once)."
  @spec enable(GenServer.server()) :: :ok | {:error, :not_running}
  def enable(server \\ __MODULE__), do: call(server, :enable)

  @doc "Disables periodic sampling; `sample_now/1` still works."
  @spec disable(GenServer.server()) :: :ok | {:error, :not_running}
  def disable(server \\ __MODULE__), do: call(server, :disable)

  @doc """
  The profiler's statistics: `:enabled`, `:interval_ms`, `:sample_count`
  (samples that found GPUs), `:last_sample_time` (system time, ms),
  `:devices` (of the last sample), `:error_count` and `:last_error`.
  """
  @spec get_stats(GenServer.server()) :: map() | {:error, :not_running}
  def get_stats(server \\ __MODULE__), do: call(server, :stats)

  @doc "Takes a sample now: `:ok`, or `{:error, :no_gpu}` when no GPU answered."
  @spec sample_now(GenServer.server()) :: :ok | {:error, :no_gpu | :not_running}
  def sample_now(server \\ __MODULE__), do: call(server, :sample_now)

  @doc """
  Sets the sampling interval (ms, a positive integer): `:ok`, or
  `{:error, :invalid_interval}`. The next sample is due one new interval
  from now.
  """
  @spec set_interval(GenServer.server(), pos_integer()) ::
          :ok | {:error, :invalid_interval | :not_running}
  def set_interval(server \\ __MODULE__, interval_ms)

  def set_interval(server, interval_ms) when is_integer(interval_ms) and interval_ms > 0,
    do: call(server, {:set_interval, interval_ms})

  def set_interval(_server, _interval_ms), do: {:error, :invalid_interval}

  defp call(server, request) do
    GenServer.call(server, request, 10_000)
  catch
    :exit, {reason, _} when reason in [:noproc, :normal, :shutdown] -> {:error, :not_running}
  end

  # Options checked in the caller: a bad one is an error from start_link.
  defp config(opts) do
    interval = Keyword.get(opts, :interval_ms, @default_interval_ms)
    enabled = Keyword.get(opts, :enabled, true)

    cond do
      not Keyword.keyword?(opts) ->
        {:error, {:invalid_options, opts}}

      not (is_integer(interval) and interval > 0) ->
        {:error, {:invalid_interval, interval}}

      not is_boolean(enabled) ->
        {:error, {:invalid_option, :enabled, enabled}}

      true ->
        try do
          {:ok,
           %{
             interval_ms: interval,
             enabled: enabled,
             runner: Probe.runner(opts, :nvidia_smi, "nvidia-smi"),
             probe_timeout_ms: Probe.timeout(opts)
           }}
        rescue
          e in ArgumentError -> {:error, {:invalid_option, Exception.message(e)}}
        end
    end
  end

  # -- server ----------------------------------------------------------------------

  @impl true
  def init(config) do
    state =
      Map.merge(config, %{
        sample_count: 0,
        last_sample_time: nil,
        timer_ref: nil,
        devices: [],
        error_count: 0,
        last_error: nil
      })

    {:ok, if(state.enabled, do: schedule(state, 0), else: state)}
  end

  @impl true
  def handle_call(:enable, _from, %{enabled: true} = state), do: {:reply, :ok, state}

  def handle_call(:enable, _from, state),
    do: {:reply, :ok, schedule(%{state | enabled: true}, 0)}

  def handle_call(:disable, _from, state),
    do: {:reply, :ok, %{cancel(state) | enabled: false}}

  def handle_call(:stats, _from, state) do
    {:reply,
     Map.take(state, [
       :enabled,
       :interval_ms,
       :sample_count,
       :last_sample_time,
       :devices,
       :error_count,
       :last_error
     ]), state}
  end

  def handle_call(:sample_now, _from, state) do
    {result, state} = sample(state)
    {:reply, result, state}
  end

  def handle_call({:set_interval, ms}, _from, state) do
    state = %{state | interval_ms: ms}
    {:reply, :ok, if(state.enabled, do: schedule(state, ms), else: state)}
  end

  @impl true
  def handle_info({:sample, ref}, %{timer_ref: ref, enabled: true} = state) do
    {_result, state} = sample(state)
    {:noreply, schedule(state, state.interval_ms)}
  end

  # A timer cancelled too late, or anything else.
  def handle_info(_other, state), do: {:noreply, state}

  defp schedule(state, after_ms) do
    state = cancel(state)
    ref = make_ref()
    Process.send_after(self(), {:sample, ref}, after_ms)
    %{state | timer_ref: ref}
  end

  # The timer's message carries its ref, so a stale one is ignored.
  defp cancel(state), do: %{state | timer_ref: nil}

  defp sample(state) do
    args = ["--query-gpu=" <> @fields, "--format=csv,noheader,nounits"]

    with {:ok, output} <- Probe.run(state.runner, args, state.probe_timeout_ms),
         [_ | _] = samples <- parse(output) do
      Enum.each(samples, &emit/1)

      {:ok,
       %{
         state
         | sample_count: state.sample_count + 1,
           last_sample_time: System.system_time(:millisecond),
           devices: Enum.map(samples, &{:cuda, &1.index})
       }}
    else
      [] -> {{:error, :no_gpu}, failed(state, :no_gpu)}
      {:error, reason} -> {{:error, :no_gpu}, failed(state, reason)}
    end
  end

  defp failed(state, reason),
    do: %{state | error_count: state.error_count + 1, last_error: reason, devices: []}

  @doc false
  # One sample per GPU row of the query output; rows that are not a GPU
  # (a driver error message, an empty line) are skipped.
  @spec parse(String.t()) :: [sample()]
  def parse(output) do
    output
    |> String.split("\n", trim: true)
    |> Enum.flat_map(fn line ->
      case line |> String.split(",") |> Enum.map(&String.trim/1) do
        [index, name, used, total, free, gpu, mem, temp, power] ->
          case Integer.parse(index) do
            {i, ""} when i >= 0 ->
              [
                %{
                  index: i,
                  name: name,
                  memory_used_mb: number(used),
                  memory_total_mb: number(total),
                  memory_free_mb: number(free),
                  gpu_percent: number(gpu),
                  memory_percent: number(mem),
                  celsius: number(temp),
                  watts: number(power)
                }
              ]

            _ ->
              []
          end

        _ ->
          []
      end
    end)
  end

  # "[N/A]", "[Not Supported]" and the like are nil.
  defp number(text) do
    case Integer.parse(text) do
      {n, ""} ->
        n

      _ ->
        case Float.parse(text) do
          {f, ""} -> f
          _ -> nil
        end
    end
  end

  defp emit(sample) do
    meta = %{device: {:cuda, sample.index}, name: sample.name}

    memory =
      present(
        used_mb: sample.memory_used_mb,
        total_mb: sample.memory_total_mb,
        free_mb: sample.memory_free_mb
      )

    utilization = present(gpu_percent: sample.gpu_percent, memory_percent: sample.memory_percent)
    temperature = present(celsius: sample.celsius)
    power = present(watts: sample.watts)

    if memory != %{}, do: Telemetry.emit([:snakepit, :gpu, :memory, :sampled], memory, meta)

    if utilization != %{},
      do: Telemetry.emit([:snakepit, :gpu, :utilization, :sampled], utilization, meta)

    if temperature != %{},
      do: Telemetry.emit([:snakepit, :gpu, :temperature, :sampled], temperature, meta)

    if power != %{}, do: Telemetry.emit([:snakepit, :gpu, :power, :sampled], power, meta)
  end

  defp present(measurements), do: for({k, v} when v != nil <- measurements, into: %{}, do: {k, v})
end
