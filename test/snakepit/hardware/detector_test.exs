defmodule Snakepit.Hardware.DetectorTest do
  # Uses the global :persistent_term cache.
  use ExUnit.Case, async: false

  alias Snakepit.Hardware.Detector

  @fixtures Path.expand("../../fixtures/hardware", __DIR__)

  defp fixture(name), do: File.read!(Path.join(@fixtures, name))

  defp base_opts, do: Snakepit.Test.HardwareFixtures.cpu_only()

  test "CPU only" do
    info = Detector.detect(base_opts())

    assert %{
             accelerator: :cpu,
             cuda: nil,
             rocm: nil,
             mps: nil,
             platform: "linux-x86_64",
             cpu: %{cores: 2}
           } = info

    assert %{
             cuda: false,
             mps: false,
             rocm: false,
             avx: true,
             avx2: true,
             avx512: true,
             cuda_version: nil,
             cudnn: false
           } =
             Detector.capabilities(info)
  end

  test "CUDA machine" do
    smi = fn
      [] -> {:ok, fixture("nvidia_smi_banner_h100.txt")}
      _ -> {:ok, fixture("nvidia_smi_query_h100.csv")}
    end

    opts =
      Keyword.merge(base_opts(),
        nvidia_smi: smi,
        cudnn_header_paths: [Path.join(@fixtures, "cudnn_version.h")]
      )

    info = Detector.detect(opts)
    assert info.accelerator == :cuda

    assert %{cuda: true, cuda_version: "12.2", cudnn_version: "8.9.7", cudnn: true} =
             Detector.capabilities(info)
  end

  test "ROCm machine" do
    opts = Keyword.merge(base_opts(), rocm_smi: fn _ -> {:ok, fixture("rocm_smi_mi210.json")} end)
    info = Detector.detect(opts)
    assert info.accelerator == :rocm
    assert Detector.capabilities(info).rocm
  end

  test "Apple Silicon machine" do
    opts =
      Keyword.merge(base_opts(),
        os_type: {:unix, :darwin},
        arch: "aarch64-apple-darwin23.4.0",
        sysctl: fn
          ["-n", "hw.physicalcpu" | _] -> {:ok, "8\n8\nApple M1\n17179869184\n"}
          ["-n", "hw.memsize"] -> {:ok, "17179869184\n"}
          _ -> {:error, :unsupported}
        end,
        system_profiler: fn _ -> {:ok, "Chipset Model: Apple M1\n"} end
      )

    info = Detector.detect(opts)

    assert %{
             accelerator: :mps,
             platform: "darwin-arm64",
             mps: %{available: true, device_name: "Apple M1"}
           } = info

    assert %{mps: true, avx: false} = Detector.capabilities(info)
  end

  test "every probe hanging still answers within the bound" do
    hang = fn _ -> Process.sleep(:infinity) end
    opts = Keyword.merge(base_opts(), nvidia_smi: hang, rocm_smi: hang, probe_timeout_ms: 100)
    {micros, info} = :timer.tc(fn -> Detector.detect(opts) end)
    assert info.accelerator == :cpu
    assert micros < 2_000_000
  end

  test "bad options raise ArgumentError naming the option" do
    assert_raise ArgumentError, ~r/:nvidia_smi/, fn ->
      Detector.detect(Keyword.put(base_opts(), :nvidia_smi, :nope))
    end

    assert_raise ArgumentError, ~r/keyword/, fn -> Detector.detect([:oops]) end
  end

  test "platform strings" do
    assert Detector.platform(os_type: {:unix, :linux}, arch: "aarch64-unknown-linux-gnu") ==
             "linux-aarch64"

    assert Detector.platform(os_type: {:unix, :darwin}, arch: "x86_64-apple-darwin22") ==
             "darwin-x86_64"

    assert Detector.platform(os_type: {:unix, :freebsd}, arch: "amd64-portbld-freebsd14.0") ==
             "freebsd-amd64"
  end

  test "detect/0 is cached until clear_cache/0" do
    :ok = Detector.clear_cache()
    first = Detector.detect()
    assert :persistent_term.get({Detector, :hardware_info}) == first
    assert Detector.detect() == first
    assert :ok = Detector.clear_cache()
    assert :persistent_term.get({Detector, :hardware_info}, :gone) == :gone
    assert Detector.detect() == first
  end
end
