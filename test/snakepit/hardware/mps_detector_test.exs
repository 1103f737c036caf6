defmodule Snakepit.Hardware.MPSDetectorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Hardware.MPSDetector

  @profiler_output """
  Graphics/Displays:

      Apple M2 Pro:

        Chipset Model: Apple M2 Pro
        Type: GPU
        Bus: Built-In
        Total Number of Cores: 19
        Vendor: Apple (0x106b)
        Metal Support: Metal 3
  """

  defp sysctl(["-n", "machdep.cpu.brand_string"]), do: {:ok, "Apple M2 Pro\n"}
  defp sysctl(["-n", "hw.memsize"]), do: {:ok, "34359738368\n"}

  test "nil on non-macOS" do
    assert MPSDetector.detect(os_type: {:unix, :linux}) == nil
    assert MPSDetector.detect(os_type: {:win32, :nt}) == nil
  end

  test "Apple Silicon" do
    info =
      MPSDetector.detect(
        os_type: {:unix, :darwin},
        arch: "aarch64-apple-darwin23.4.0",
        system_profiler: fn ["SPDisplaysDataType"] -> {:ok, @profiler_output} end,
        sysctl: &sysctl/1
      )

    assert info == %{available: true, device_name: "Apple M2 Pro", memory_total_mb: 32_768}
  end

  test "Intel Mac: present but not available; failing probes fall back" do
    info =
      MPSDetector.detect(
        os_type: {:unix, :darwin},
        arch: "x86_64-apple-darwin22.1.0",
        system_profiler: fn _ -> {:error, :not_found} end,
        sysctl: fn _ -> Process.sleep(:infinity) end,
        probe_timeout_ms: 30
      )

    assert info == %{available: false, device_name: "Apple GPU", memory_total_mb: 0}
  end

  test "this machine" do
    case :os.type() do
      {:unix, :darwin} -> assert %{available: _} = MPSDetector.detect()
      _ -> assert MPSDetector.detect() == nil
    end
  end
end
