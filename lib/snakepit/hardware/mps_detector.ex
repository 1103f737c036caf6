defmodule Snakepit.Hardware.MPSDetector do
  @moduledoc """
  Apple Metal Performance Shaders (MPS) detection.

  Returns `nil` on anything but macOS. On macOS, MPS is reported as
  available on Apple Silicon (arm64); on Intel Macs the map is returned
  with `available: false`. The device name comes from `system_profiler
  SPDisplaysDataType` (falling back to the CPU brand string) and the memory
  is the machine's unified memory (`sysctl hw.memsize`).

  ## Options (for `detect/1`)

    * `:os_type` - overrides `:os.type()`
    * `:arch` - overrides the system architecture string
    * `:system_profiler`, `:sysctl` - runners: functions taking the argument
      list and returning `{:ok, output}` or `{:error, reason}`
    * `:probe_timeout_ms` - bound on each command (default 2000)
  """

  alias Snakepit.Hardware.Probe

  @type mps_info :: %{
          available: boolean(),
          device_name: String.t(),
          memory_total_mb: non_neg_integer()
        }

  @doc """
  Detects MPS availability.

  Returns `nil` on non-macOS platforms, or a map with `:available`,
  `:device_name` and `:memory_total_mb`.
  """
  @spec detect(keyword()) :: mps_info() | nil
  def detect(opts \\ []) do
    case Keyword.get(opts, :os_type, :os.type()) do
      {:unix, :darwin} -> detect_darwin(opts)
      _other -> nil
    end
  end

  defp detect_darwin(opts) do
    arch = Keyword.get(opts, :arch, to_string(:erlang.system_info(:system_architecture)))
    timeout = Probe.timeout(opts)
    sysctl = Probe.runner(opts, :sysctl, "sysctl")
    profiler = Probe.runner(opts, :system_profiler, "system_profiler")

    chipset =
      case Probe.run(profiler, ["SPDisplaysDataType"], timeout) do
        {:ok, out} ->
          case Regex.run(~r/Chipset Model:\s*(.+)$/m, out, capture: :all_but_first) do
            [name] -> String.trim(name)
            nil -> nil
          end

        {:error, _} ->
          nil
      end

    brand =
      case Probe.run(sysctl, ["-n", "machdep.cpu.brand_string"], timeout) do
        {:ok, out} -> if String.trim(out) != "", do: String.trim(out)
        {:error, _} -> nil
      end

    memory =
      with {:ok, out} <- Probe.run(sysctl, ["-n", "hw.memsize"], timeout),
           {bytes, _} <- Integer.parse(String.trim(out)) do
        div(bytes, 1024 * 1024)
      else
        _ -> 0
      end

    %{
      available: arch =~ ~r/^(aarch64|arm)/,
      device_name: chipset || brand || "Apple GPU",
      memory_total_mb: memory
    }
  end
end
