defmodule Snakepit.Hardware.Detector do
  @moduledoc """
  Unified hardware detection.

  Runs the CPU, CUDA, MPS and ROCm detectors (concurrently, each bounded
  in time) and folds their results into one map. `detect/0` caches the
  result in `:persistent_term` until `clear_cache/0`.

  The primary accelerator is the first present of CUDA, ROCm, MPS (when
  available), else `:cpu`.

  ## Telemetry

    * `[:snakepit, :hardware, :detect, :start]` - `%{system_time: t}`, `%{}`
    * `[:snakepit, :hardware, :detect, :stop]` - `%{duration: native_time}`,
      `%{accelerator: atom, platform: string}`
    * `[:snakepit, :hardware, :cache, :hit | :miss]` - `%{}`,
      `%{key: :hardware_info}`
  """

  alias Snakepit.Hardware.{CPUDetector, CUDADetector, MPSDetector, ROCmDetector}

  @type accelerator :: :cpu | :cuda | :mps | :rocm

  @type capabilities :: %{
          cuda: boolean(),
          mps: boolean(),
          rocm: boolean(),
          avx: boolean(),
          avx2: boolean(),
          avx512: boolean(),
          cuda_version: String.t() | nil,
          cudnn_version: String.t() | nil,
          cudnn: boolean()
        }

  @type hardware_info :: %{
          accelerator: accelerator(),
          cpu: CPUDetector.cpu_info(),
          cuda: CUDADetector.cuda_info() | nil,
          mps: MPSDetector.mps_info() | nil,
          rocm: ROCmDetector.rocm_info() | nil,
          platform: String.t()
        }

  @cache_key {__MODULE__, :hardware_info}

  @doc """
  Detects all hardware information.

  With no options the result is cached. Options are passed to every
  detector (see their docs: `:cpuinfo_path`, `:nvidia_smi`, `:rocm_smi`,
  `:os_type`, `:probe_timeout_ms`, ...) and bypass the cache; tests use
  them to feed fixtures.
  """
  @spec detect(keyword()) :: hardware_info()
  def detect(opts \\ [])

  def detect([]) do
    case :persistent_term.get(@cache_key, nil) do
      nil ->
        emit([:cache, :miss], %{}, %{key: :hardware_info})
        info = run([])
        :persistent_term.put(@cache_key, info)
        info

      info ->
        emit([:cache, :hit], %{}, %{key: :hardware_info})
        info
    end
  end

  def detect(opts) when is_list(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "hardware detection options must be a keyword list, got: #{inspect(opts)}"
    end

    run(opts)
  end

  @doc """
  Returns hardware capability flags, from `detect/0` or from a given
  hardware info map.
  """
  @spec capabilities(hardware_info() | nil) :: capabilities()
  def capabilities(info \\ nil) do
    info = info || detect()
    features = info.cpu.features
    cuda = info.cuda

    %{
      cuda: cuda != nil,
      mps: mps_available?(info),
      rocm: info.rocm != nil,
      avx: :avx in features,
      avx2: :avx2 in features,
      avx512: :avx512f in features,
      cuda_version: cuda && cuda.version,
      cudnn_version: cuda && cuda.cudnn_version,
      cudnn: cuda != nil and cuda.cudnn_version != nil
    }
  end

  @doc "Clears the detection cache; the next `detect/0` probes again."
  @spec clear_cache() :: :ok
  def clear_cache do
    :persistent_term.erase(@cache_key)
    :ok
  end

  @doc """
  Returns the platform string, e.g. `"linux-x86_64"`, `"linux-aarch64"`,
  `"darwin-arm64"`.
  """
  @spec platform(keyword()) :: String.t()
  def platform(opts \\ []) do
    os_type = Keyword.get(opts, :os_type, :os.type())
    arch = Keyword.get(opts, :arch, to_string(:erlang.system_info(:system_architecture)))

    os =
      case os_type do
        {:unix, :linux} -> "linux"
        {:unix, :darwin} -> "darwin"
        {:win32, _} -> "windows"
        {_family, name} -> to_string(name)
      end

    cpu =
      case {os, arch |> String.split("-") |> hd()} do
        {"darwin", "aarch64"} -> "arm64"
        {"windows", _} -> windows_arch()
        {_, cpu} -> cpu
      end

    "#{os}-#{cpu}"
  end

  @doc false
  @spec mps_available?(hardware_info()) :: boolean()
  def mps_available?(%{mps: %{available: true}}), do: true
  def mps_available?(_info), do: false

  defp run(opts) do
    started = System.monotonic_time()
    emit([:detect, :start], %{system_time: System.system_time()}, %{})

    [cpu, cuda, rocm, mps] =
      [
        {CPUDetector, &fallback_cpu/0},
        {CUDADetector, fn -> nil end},
        {ROCmDetector, fn -> nil end},
        {MPSDetector, fn -> nil end}
      ]
      |> Enum.map(fn {detector, fallback} ->
        Task.async(fn ->
          try do
            detector.detect(opts)
          rescue
            error in ArgumentError -> {:raise, error, __STACKTRACE__}
          catch
            _kind, _reason -> fallback.()
          end
        end)
      end)
      |> Task.await_many(:infinity)
      |> Enum.map(fn
        {:raise, error, stack} -> reraise error, stack
        result -> result
      end)

    info = %{
      accelerator: accelerator(cuda, rocm, mps),
      cpu: cpu,
      cuda: cuda,
      mps: mps,
      rocm: rocm,
      platform: platform(opts)
    }

    emit([:detect, :stop], %{duration: System.monotonic_time() - started}, %{
      accelerator: info.accelerator,
      platform: info.platform
    })

    info
  end

  defp accelerator(cuda, _rocm, _mps) when cuda != nil, do: :cuda
  defp accelerator(nil, rocm, _mps) when rocm != nil, do: :rocm
  defp accelerator(nil, nil, %{available: true}), do: :mps
  defp accelerator(_cuda, _rocm, _mps), do: :cpu

  defp fallback_cpu do
    threads =
      :erlang.system_info(:logical_processors) |> then(&if(is_integer(&1), do: &1, else: 1))

    %{cores: threads, threads: threads, model: "unknown", features: [], memory_total_mb: 0}
  end

  defp windows_arch do
    case System.get_env("PROCESSOR_ARCHITECTURE") do
      "AMD64" -> "x86_64"
      "ARM64" -> "arm64"
      nil -> "unknown"
      other -> String.downcase(other)
    end
  end

  defp emit(suffix, measurements, metadata) do
    Snakepit.Telemetry.emit([:snakepit, :hardware | suffix], measurements, metadata)
  end
end
