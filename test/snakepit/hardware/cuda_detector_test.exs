defmodule Snakepit.Hardware.CUDADetectorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Hardware.CUDADetector

  @fixtures Path.expand("../../fixtures/hardware", __DIR__)

  defp fixture(name), do: File.read!(Path.join(@fixtures, name))
  defp path(name), do: Path.join(@fixtures, name)

  # An nvidia-smi stand-in answering the query with `query` and the plain
  # call with `banner`.
  defp smi(query, banner \\ fixture("nvidia_smi_banner_h100.txt")) do
    fn
      ["--query-gpu=" <> _fields, "--format=csv,noheader,nounits"] -> query
      [] -> {:ok, banner}
    end
  end

  defp detect(runner, opts \\ []) do
    CUDADetector.detect(
      Keyword.merge(
        [
          nvidia_smi: runner,
          proc_driver_dir: "/nonexistent/nvidia",
          cudnn_header_paths: [path("cudnn_version.h")],
          cuda_version_paths: []
        ],
        opts
      )
    )
  end

  test "H100: device, driver, CUDA version from the banner, cuDNN from the header" do
    info = detect(smi({:ok, fixture("nvidia_smi_query_h100.csv")}))

    assert %{
             version: "12.2",
             driver_version: "535.154.05",
             cudnn_version: "8.9.7",
             devices: [
               %{
                 id: 0,
                 name: "NVIDIA H100 80GB HBM3",
                 memory_total_mb: 81_559,
                 memory_free_mb: 81_004,
                 compute_capability: "9.0"
               }
             ]
           } = info
  end

  test "two GPUs keep their ids and free memory" do
    info = detect(smi({:ok, fixture("nvidia_smi_query_2x4090.csv")}))

    assert [
             %{id: 0, memory_free_mb: 23_985},
             %{id: 1, memory_free_mb: 1_203, compute_capability: "8.9"}
           ] = info.devices

    assert info.driver_version == "550.54.14"
  end

  test "unified-memory GPUs report [N/A] memory as 0" do
    info = detect(smi({:ok, fixture("nvidia_smi_query_gb10_unified.csv")}))

    assert [
             %{
               name: "NVIDIA GB10",
               memory_total_mb: 0,
               memory_free_mb: 0,
               compute_capability: "12.1"
             }
           ] = info.devices
  end

  test "old drivers without compute_cap are queried again without it" do
    test_pid = self()

    runner = fn
      ["--query-gpu=" <> fields, _format] ->
        send(test_pid, {:queried, fields})

        if fields =~ "compute_cap" do
          {:error, {:exit_status, 2, fixture("nvidia_smi_old_driver_compute_cap_error.txt")}}
        else
          {:ok, fixture("nvidia_smi_query_k80_no_cc.csv")}
        end

      [] ->
        {:ok,
         "+-----+\n| NVIDIA-SMI 470.223.02   Driver Version: 470.223.02   CUDA Version: 11.4 |\n"}
    end

    info = detect(runner)
    assert_received {:queried, "index,name,memory.total,memory.free,driver_version,compute_cap"}
    assert_received {:queried, "index,name,memory.total,memory.free,driver_version"}
    assert info.version == "11.4"
    assert [%{name: "Tesla K80", compute_capability: nil}, %{id: 1}] = info.devices
  end

  test "nvidia-smi missing, failing, crashing or garbled means no CUDA" do
    no_driver = {:error, {:exit_status, 9, fixture("nvidia_smi_no_driver.txt")}}

    runners = [
      fn _ -> {:error, :not_found} end,
      fn _ -> no_driver end,
      fn _ -> {:ok, <<0, 255, 254>> <> "garbage,,,\n1,2\nname, memory.total [MiB]\n"} end,
      fn _ -> {:ok, fixture("nvidia_smi_no_driver.txt")} end,
      fn _ -> raise "probe bug" end,
      fn _ -> :not_a_result end
    ]

    for runner <- runners, do: assert(detect(runner) == nil)
  end

  test "a hanging nvidia-smi means no CUDA once the probe timeout passes; the probe is killed" do
    test_pid = self()

    hanging = fn _ ->
      send(test_pid, {:probe, self()})
      Process.sleep(:infinity)
    end

    task = Task.async(fn -> detect(hanging, probe_timeout_ms: 50) end)
    assert_receive {:probe, probe}, 30_000
    ref = Process.monitor(probe)
    # A generous limit: without the probe timeout it would never return.
    assert {:ok, nil} = Task.yield(task, 30_000) || Task.shutdown(task)
    assert_receive {:DOWN, ^ref, :process, ^probe, _}, 30_000
  end

  test "without nvidia-smi, GPUs under /proc/driver/nvidia are reported" do
    info =
      detect(fn _ -> {:error, :not_found} end,
        proc_driver_dir: path("proc_driver_nvidia"),
        cudnn_header_paths: []
      )

    assert %{
             version: "unknown",
             driver_version: "535.154.05",
             cudnn_version: nil,
             devices: [
               %{
                 id: 0,
                 name: "NVIDIA H100 80GB HBM3",
                 memory_total_mb: 0,
                 compute_capability: nil
               }
             ]
           } = info
  end

  test "CUDA version falls back to the toolkit's version.json" do
    dir = Path.join(System.tmp_dir!(), "snakepit_cuda_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    json = Path.join(dir, "version.json")

    File.write!(
      json,
      ~s({"cuda": {"name": "CUDA SDK", "version": "12.4.1"}, "cuda_cudart": {"version": "12.4.127"}})
    )

    txt = Path.join(dir, "version.txt")
    File.write!(txt, "CUDA Version 11.0.228\n")

    query = {:ok, fixture("nvidia_smi_query_h100.csv")}
    assert detect(smi(query, "no banner"), cuda_version_paths: [json]).version == "12.4.1"

    assert detect(smi(query, "no banner"), cuda_version_paths: ["/nonexistent", txt]).version ==
             "11.0.228"
  end

  test "parsers" do
    assert CUDADetector.parse_banner_cuda_version(fixture("nvidia_smi_banner_h100.txt")) == "12.2"
    assert CUDADetector.parse_banner_cuda_version("nothing") == nil
    assert CUDADetector.parse_cudnn_header(fixture("cudnn_version.h")) == "8.9.7"
    assert CUDADetector.parse_cudnn_header("#define CUDNN_MAJOR 9\n") == nil
    assert {[], nil} = CUDADetector.parse_query_output("")
  end

  # The GPUs this machine has, by the driver's own tools: `nvidia-smi -L`,
  # else the driver's /proc entries (the detector's fallback), else none.
  defp machine_gpus do
    listed =
      with smi when is_binary(smi) <- System.find_executable("nvidia-smi"),
           {out, 0} <- System.cmd(smi, ["-L"], stderr_to_stdout: true) do
        out |> String.split("\n") |> Enum.count(&String.starts_with?(&1, "GPU "))
      else
        _ -> 0
      end

    case File.ls("/proc/driver/nvidia/gpus") do
      _ when listed > 0 -> listed
      {:ok, entries} -> length(entries)
      {:error, _} -> 0
    end
  end

  test "this machine: the default probe finds the GPUs the driver lists" do
    case machine_gpus() do
      0 ->
        assert CUDADetector.detect() == nil

      n ->
        assert %{devices: devices} = CUDADetector.detect()
        assert length(devices) == n
    end
  end

  test "bad runner option raises ArgumentError naming it" do
    assert_raise ArgumentError, ~r/:nvidia_smi/, fn ->
      CUDADetector.detect(nvidia_smi: "nvidia-smi")
    end

    assert_raise ArgumentError, ~r/:cudnn_header_paths/, fn ->
      detect(smi({:ok, ""}), cudnn_header_paths: "x")
    end
  end
end
