defmodule Snakepit.Hardware.CPUDetectorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Hardware.CPUDetector

  @fixtures Path.expand("../../fixtures/hardware", __DIR__)

  defp fixture(name), do: Path.join(@fixtures, name)

  defp detect(cpuinfo, opts \\ []) do
    CPUDetector.detect(
      Keyword.merge(
        [
          os_type: {:unix, :linux},
          cpuinfo_path: fixture(cpuinfo),
          meminfo_path: fixture("meminfo.txt")
        ],
        opts
      )
    )
  end

  test "AMD EPYC VM: 2 cores, 2 threads, AVX-512 family" do
    info = detect("cpuinfo_epyc_2vcpu.txt")
    assert %{cores: 2, threads: 2, model: "AMD EPYC"} = info

    for flag <- [
          :sse3,
          :ssse3,
          :sse4_1,
          :sse4_2,
          :avx,
          :avx2,
          :fma,
          :avx512f,
          :avx512bw,
          :avx512_bf16,
          :avx512_vnni
        ] do
      assert flag in info.features, "missing #{flag}"
    end

    assert info.features == Enum.sort(info.features)
    assert Enum.all?(info.features, &(&1 in CPUDetector.known_features()))
  end

  test "Intel laptop with hyperthreading: 2 cores, 4 threads, no AVX-512" do
    info = detect("cpuinfo_intel_2c4t.txt")
    assert %{cores: 2, threads: 4, model: "Intel(R) Core(TM) i7-7500U CPU @ 2.70GHz"} = info
    assert :avx2 in info.features
    refute :avx512f in info.features
  end

  test "ARM (Graviton3): features from the Features line, cores from threads" do
    info = detect("cpuinfo_graviton3.txt")
    assert %{cores: 2, threads: 2, model: "unknown"} = info
    assert [:aes, :fp16, :neon, :sve] == info.features
  end

  test "memory from meminfo" do
    [kb] =
      Regex.run(~r/^MemTotal:\s+(\d+)/m, File.read!(fixture("meminfo.txt")),
        capture: :all_but_first
      )

    assert detect("cpuinfo_epyc_2vcpu.txt").memory_total_mb == div(String.to_integer(kb), 1024)
  end

  test "missing or garbage files fall back without crashing" do
    logical = :erlang.system_info(:logical_processors)

    missing =
      CPUDetector.detect(
        os_type: {:unix, :linux},
        cpuinfo_path: "/nonexistent/cpuinfo",
        meminfo_path: "/nonexistent"
      )

    assert %{
             threads: ^logical,
             cores: ^logical,
             model: "unknown",
             features: [],
             memory_total_mb: 0
           } = missing

    path =
      Path.join(
        System.tmp_dir!(),
        "snakepit_garbage_cpuinfo_#{System.unique_integer([:positive])}"
      )

    File.write!(path, <<0, 255, 1, 2>> <> "no colon lines\n\n\n:::\n")
    on_exit(fn -> File.rm(path) end)
    garbage = CPUDetector.detect(os_type: {:unix, :linux}, cpuinfo_path: path, meminfo_path: path)
    assert %{threads: ^logical, features: [], memory_total_mb: 0} = garbage
  end

  test "macOS through sysctl" do
    sysctl = fn
      ["-n", "hw.physicalcpu" | _] -> {:ok, "10\n12\nApple M2 Pro\n34359738368\n"}
      ["-n", "machdep.cpu.features" | _] -> {:error, {:exit_status, 1, "unknown oid"}}
    end

    info =
      CPUDetector.detect(
        os_type: {:unix, :darwin},
        arch: "aarch64-apple-darwin23.4.0",
        sysctl: sysctl
      )

    assert %{
             cores: 10,
             threads: 12,
             model: "Apple M2 Pro",
             memory_total_mb: 32_768,
             features: [:neon]
           } = info

    intel_sysctl = fn
      ["-n", "hw.physicalcpu" | _] ->
        {:ok, "4\n8\nIntel(R) Core(TM) i7-8569U CPU @ 2.80GHz\n17179869184\n"}

      ["-n", "machdep.cpu.features" | _] ->
        {:ok, "FPU VME SSE SSE2 SSE3 SSSE3 FMA SSE4.1 SSE4.2 POPCNT AES AVX1.0\nAVX2 BMI1 BMI2\n"}
    end

    info =
      CPUDetector.detect(
        os_type: {:unix, :darwin},
        arch: "x86_64-apple-darwin22",
        sysctl: intel_sysctl
      )

    assert %{cores: 4, threads: 8, memory_total_mb: 16_384} = info

    assert [
             :aes,
             :avx,
             :avx2,
             :bmi1,
             :bmi2,
             :fma,
             :popcnt,
             :sse,
             :sse2,
             :sse3,
             :sse4_1,
             :sse4_2,
             :ssse3
           ] == info.features
  end

  test "macOS with a hanging sysctl stays bounded" do
    sysctl = fn _args -> Process.sleep(:infinity) end

    {micros, info} =
      :timer.tc(fn ->
        CPUDetector.detect(os_type: {:unix, :darwin}, sysctl: sysctl, probe_timeout_ms: 30)
      end)

    assert info.threads >= 1 and info.model == "unknown"
    assert micros < 2_000_000
  end

  test "bad options raise ArgumentError naming the option" do
    assert_raise ArgumentError, ~r/:cpuinfo_path/, fn ->
      CPUDetector.detect(os_type: {:unix, :linux}, cpuinfo_path: 42)
    end

    assert_raise ArgumentError, ~r/:sysctl/, fn ->
      CPUDetector.detect(os_type: {:unix, :darwin}, sysctl: "sysctl")
    end

    assert_raise ArgumentError, ~r/:probe_timeout_ms/, fn ->
      CPUDetector.detect(os_type: {:unix, :darwin}, probe_timeout_ms: -1)
    end
  end

  @tag :linux
  if match?({:unix, :linux}, :os.type()) do
    test "this machine: real processor count and flags from /proc/cpuinfo" do
      text = File.read!("/proc/cpuinfo")
      processors = Regex.scan(~r/^processor\s*:/m, text) |> length()

      flags =
        Regex.run(~r/^flags\s*:(.*)$/m, text, capture: :all_but_first)
        |> List.first("")
        |> String.split()

      info = CPUDetector.detect()
      assert info.threads == processors
      assert info.cores >= 1 and info.cores <= info.threads
      assert :avx2 in info.features == "avx2" in flags
      assert :avx512f in info.features == "avx512f" in flags
      assert info.memory_total_mb > 0
    end
  end
end
