defmodule Snakepit.Hardware do
  @moduledoc """
  Hardware detection and device selection for ML workloads.

  Detects the CPU (cores, threads, model, memory, SSE/AVX/AVX2/AVX-512
  and other features), NVIDIA CUDA GPUs, AMD ROCm GPUs and Apple MPS, and
  picks a device with fallbacks. Detection results are cached until
  `clear_cache/0`.

      info = Snakepit.Hardware.detect()
      # => %{accelerator: :cpu, cpu: %{cores: 2, ...}, cuda: nil, mps: nil, rocm: nil,
      #      platform: "linux-x86_64"}

      caps = Snakepit.Hardware.capabilities()
      # => %{cuda: false, mps: false, rocm: false, avx: true, avx2: true, avx512: true, ...}

      {:ok, device} = Snakepit.Hardware.select(:auto)
      {:ok, device} = Snakepit.Hardware.select_with_fallback([:cuda, :mps, :cpu])

  ## Identity map

  `identity/0` returns a string-keyed map for lock files that record the
  hardware a Python environment was resolved on:

      Snakepit.Hardware.identity() |> JSON.encode!()
      # => {"accelerator":"cpu","cpu_features":["avx","avx2",...],"gpu_count":0,...}

  Detection never fails: a probe that is missing, hangs or prints garbage
  makes that accelerator absent. See `Snakepit.Hardware.Detector` for the
  detectors and their injectable probes.
  """

  alias Snakepit.Hardware.{Detector, Selector}

  @type capabilities :: Detector.capabilities()
  @type device :: Selector.device()
  @type device_preference :: Selector.device_preference()
  @type hardware_info :: Detector.hardware_info()

  @doc """
  Detects all hardware information (cached).

  Returns a map with `:accelerator` (`:cpu`, `:cuda`, `:mps` or `:rocm`),
  `:cpu`, `:cuda`, `:mps`, `:rocm` (each `nil` when absent) and
  `:platform` (e.g. `"linux-x86_64"`).
  """
  @spec detect() :: hardware_info()
  def detect, do: Detector.detect()

  @doc "Alias for `detect/0`."
  @spec info() :: hardware_info()
  def info, do: Detector.detect()

  @doc """
  Returns capability flags: `:cuda`, `:mps`, `:rocm`, `:avx`, `:avx2`,
  `:avx512`, `:cudnn` (booleans) and `:cuda_version`, `:cudnn_version`
  (strings or `nil`).
  """
  @spec capabilities() :: capabilities()
  def capabilities, do: Detector.capabilities()

  @doc "Clears the hardware detection cache; the next call probes again."
  @spec clear_cache() :: :ok
  def clear_cache, do: Detector.clear_cache()

  @doc """
  Selects a device based on preference (`:auto`, `:cpu`, `:cuda`, `:mps`,
  `:rocm`, `{:cuda, id}`).

  Returns `{:ok, device}` or `{:error, :device_not_available}`. Unknown
  preferences raise `ArgumentError`. See `Snakepit.Hardware.Selector.select/2`.
  """
  @spec select(device_preference()) :: {:ok, device()} | {:error, :device_not_available}
  def select(preference), do: Selector.select(preference)

  @doc """
  Selects the first available device from a preference list, or returns
  `{:error, :no_device}`.
  """
  @spec select_with_fallback([device_preference()]) :: {:ok, device()} | {:error, :no_device}
  def select_with_fallback(preferences), do: Selector.select_with_fallback(preferences)

  @doc """
  Returns device information for logging, telemetry and diagnostics, e.g.
  `%{type: :cuda, device_id: 0, name: "NVIDIA H100 80GB HBM3", available: true, ...}`.
  """
  @spec device_info(device()) :: map()
  def device_info(device), do: Selector.device_info(device)

  @doc """
  Returns a hardware identity map for lock files.

  Keys: `"platform"`, `"accelerator"`, `"cpu_features"` (sorted strings),
  `"gpu_count"` (CUDA plus ROCm devices, plus one for available MPS) and
  `"cuda_version"` (`nil` without CUDA). Pass a hardware info map to build
  the identity of something other than this machine.
  """
  @spec identity(hardware_info() | nil) :: map()
  def identity(info \\ nil) do
    info = info || detect()

    gpu_count =
      length((info.cuda && info.cuda.devices) || []) +
        length((info.rocm && info.rocm.devices) || []) +
        if(Detector.mps_available?(info), do: 1, else: 0)

    %{
      "platform" => info.platform,
      "accelerator" => Atom.to_string(info.accelerator),
      "cpu_features" => info.cpu.features |> Enum.map(&Atom.to_string/1) |> Enum.sort(),
      "gpu_count" => gpu_count,
      "cuda_version" => info.cuda && info.cuda.version
    }
  end
end
