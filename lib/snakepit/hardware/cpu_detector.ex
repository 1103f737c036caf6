defmodule Snakepit.Hardware.CPUDetector do
  @moduledoc """
  CPU hardware detection.

  Reports the CPU model, physical cores, logical threads, total memory and
  the instruction-set features that matter for ML libraries (SSE, AVX,
  AVX2, AVX-512, FMA, AMX, NEON, SVE, ...).

  On Linux the data comes from `/proc/cpuinfo` and `/proc/meminfo`; on
  macOS from `sysctl`. Anything that cannot be read falls back to what the
  BEAM knows (`:erlang.system_info(:logical_processors)`), so detection
  always returns a map.

  Features are atoms from a fixed list (see `known_features/0`); flags
  outside it are ignored, so no atoms are created from probe output.

  ## Options (for `detect/1`)

    * `:cpuinfo_path` - default `"/proc/cpuinfo"`
    * `:meminfo_path` - default `"/proc/meminfo"`
    * `:os_type` - overrides `:os.type()`
    * `:arch` - overrides the system architecture string (macOS only)
    * `:sysctl` - runner for `sysctl` on macOS: a function taking the
      argument list and returning `{:ok, output}` or `{:error, reason}`
    * `:probe_timeout_ms` - bound on each command (default 2000)
  """

  alias Snakepit.Hardware.Probe

  @type cpu_info :: %{
          cores: pos_integer(),
          threads: pos_integer(),
          model: String.t(),
          features: [atom()],
          memory_total_mb: non_neg_integer()
        }

  # Flag spellings (Linux /proc/cpuinfo, macOS sysctl, ARM "Features") to atoms.
  @feature_map %{
    "sse" => :sse,
    "sse2" => :sse2,
    "pni" => :sse3,
    "sse3" => :sse3,
    "ssse3" => :ssse3,
    "sse4_1" => :sse4_1,
    "sse4_2" => :sse4_2,
    "popcnt" => :popcnt,
    "aes" => :aes,
    "f16c" => :f16c,
    "fma" => :fma,
    "bmi1" => :bmi1,
    "bmi2" => :bmi2,
    "avx" => :avx,
    "avx1_0" => :avx,
    "avx2" => :avx2,
    "avx_vnni" => :avx_vnni,
    "avx512f" => :avx512f,
    "avx512cd" => :avx512cd,
    "avx512bw" => :avx512bw,
    "avx512dq" => :avx512dq,
    "avx512vl" => :avx512vl,
    "avx512ifma" => :avx512ifma,
    "avx512vbmi" => :avx512vbmi,
    "avx512_vbmi2" => :avx512_vbmi2,
    "avx512_bitalg" => :avx512_bitalg,
    "avx512_vpopcntdq" => :avx512_vpopcntdq,
    "avx512_vnni" => :avx512_vnni,
    "avx512vnni" => :avx512_vnni,
    "avx512_bf16" => :avx512_bf16,
    "avx512_fp16" => :avx512_fp16,
    "amx_tile" => :amx_tile,
    "amx_bf16" => :amx_bf16,
    "amx_int8" => :amx_int8,
    "sha_ni" => :sha,
    "neon" => :neon,
    "asimd" => :neon,
    "asimdhp" => :fp16,
    "sve" => :sve,
    "sve2" => :sve2
  }

  @known_features @feature_map |> Map.values() |> Enum.uniq() |> Enum.sort()

  @doc "The feature atoms this detector can report."
  @spec known_features() :: [atom()]
  def known_features, do: @known_features

  @doc """
  Detects CPU hardware information.

  Returns a map with `:cores` (physical cores), `:threads` (logical
  processors), `:model`, `:features` (sorted atoms) and `:memory_total_mb`.
  """
  @spec detect(keyword()) :: cpu_info()
  def detect(opts \\ []) do
    case Keyword.get(opts, :os_type, :os.type()) do
      {:unix, :darwin} -> detect_darwin(opts)
      _other -> detect_proc(opts)
    end
  end

  # -- Linux (and anything with /proc) ----------------------------------------

  defp detect_proc(opts) do
    blocks =
      case Probe.read(Probe.path_option(opts, :cpuinfo_path, "/proc/cpuinfo")) do
        {:ok, text} -> parse_cpuinfo(text)
        {:error, _} -> []
      end

    processors = Enum.filter(blocks, &Map.has_key?(&1, "processor"))
    threads = if processors == [], do: beam_logical_processors(), else: length(processors)

    %{
      cores: physical_cores(processors, threads),
      threads: threads,
      model: model(blocks),
      features: features(blocks),
      memory_total_mb: memory_total_mb(opts)
    }
  end

  @doc false
  # Splits /proc/cpuinfo into one map per blank-line separated block.
  @spec parse_cpuinfo(String.t()) :: [%{String.t() => String.t()}]
  def parse_cpuinfo(text) do
    text
    |> String.split(~r/\n\s*\n/, trim: true)
    |> Enum.map(fn block ->
      block
      |> String.split("\n", trim: true)
      |> Enum.flat_map(fn line ->
        case String.split(line, ":", parts: 2) do
          [key, value] -> [{String.trim(key), String.trim(value)}]
          _ -> []
        end
      end)
      |> Map.new()
    end)
    |> Enum.reject(&(&1 == %{}))
  end

  defp physical_cores(processors, threads) do
    pairs =
      for p <- processors,
          {:ok, phys} <- [Map.fetch(p, "physical id")],
          {:ok, core} <- [Map.fetch(p, "core id")],
          uniq: true,
          do: {phys, core}

    cores_per_socket =
      for p <- processors,
          {:ok, phys} <- [Map.fetch(p, "physical id")],
          {n, _} <- [Integer.parse(Map.get(p, "cpu cores", ""))],
          into: %{},
          do: {phys, n}

    cond do
      pairs != [] -> length(pairs)
      map_size(cores_per_socket) > 0 -> cores_per_socket |> Map.values() |> Enum.sum()
      true -> threads
    end
    |> max(1)
  end

  defp model(blocks) do
    Enum.find_value(blocks, "unknown", fn block ->
      Enum.find_value(
        ["model name", "Model", "Hardware", "cpu model", "Processor", "cpu"],
        fn key ->
          case Map.get(block, key) do
            value when is_binary(value) and value != "" -> value
            _ -> nil
          end
        end
      )
    end)
  end

  defp features(blocks) do
    flags =
      Enum.find_value(blocks, "", fn block ->
        Map.get(block, "flags") || Map.get(block, "Features")
      end)

    to_features(String.split(flags))
  end

  defp memory_total_mb(opts) do
    with {:ok, text} <- Probe.read(Probe.path_option(opts, :meminfo_path, "/proc/meminfo")),
         [kb] <- Regex.run(~r/^MemTotal:\s+(\d+)\s*kB/m, text, capture: :all_but_first) do
      div(String.to_integer(kb), 1024)
    else
      _ -> 0
    end
  end

  # -- macOS ----------------------------------------------------------------

  defp detect_darwin(opts) do
    sysctl = Probe.runner(opts, :sysctl, "sysctl")
    timeout = Probe.timeout(opts)

    values =
      case Probe.run(
             sysctl,
             ["-n", "hw.physicalcpu", "hw.logicalcpu", "machdep.cpu.brand_string", "hw.memsize"],
             timeout
           ) do
        {:ok, out} -> String.split(out, "\n")
        {:error, _} -> []
      end

    flags =
      case Probe.run(
             sysctl,
             ["-n", "machdep.cpu.features", "machdep.cpu.leaf7_features"],
             timeout
           ) do
        {:ok, out} -> String.split(out)
        {:error, _} -> []
      end

    arch = Keyword.get(opts, :arch, to_string(:erlang.system_info(:system_architecture)))
    arm? = arch =~ ~r/^(aarch64|arm)/
    threads = int_at(values, 1) || beam_logical_processors()

    %{
      cores: int_at(values, 0) || threads,
      threads: threads,
      model:
        (Enum.at(values, 2) || "")
        |> String.trim()
        |> then(&if(&1 == "", do: "unknown", else: &1)),
      features:
        to_features(flags) |> then(&if(arm?, do: Enum.sort(Enum.uniq([:neon | &1])), else: &1)),
      memory_total_mb: div(int_at(values, 3) || 0, 1024 * 1024)
    }
  end

  defp int_at(values, index) do
    with value when is_binary(value) <- Enum.at(values, index),
         {int, _} <- Integer.parse(String.trim(value)) do
      int
    else
      _ -> nil
    end
  end

  # -- shared ---------------------------------------------------------------

  defp to_features(flags) do
    flags
    |> Enum.map(&(&1 |> String.downcase() |> String.replace(".", "_")))
    |> Enum.flat_map(fn flag ->
      case Map.fetch(@feature_map, flag) do
        {:ok, atom} -> [atom]
        :error -> []
      end
    end)
    |> Enum.uniq()
    |> Enum.sort()
  end

  defp beam_logical_processors do
    case :erlang.system_info(:logical_processors) do
      n when is_integer(n) and n > 0 -> n
      _ -> 1
    end
  end
end
