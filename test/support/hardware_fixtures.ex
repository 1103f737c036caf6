defmodule Snakepit.Test.HardwareFixtures do
  @moduledoc """
  `Snakepit.Hardware.Detector` options for a described machine: a 2-vCPU
  Linux x86_64 host from the fixtures in `test/fixtures/hardware`, with no
  GPU tool, driver or library found. Tests add what their machine has.
  """

  @dir Path.expand("../fixtures/hardware", __DIR__)

  @doc "Options for a CPU-only machine."
  def cpu_only do
    [
      os_type: {:unix, :linux},
      arch: "x86_64-pc-linux-gnu",
      cpuinfo_path: Path.join(@dir, "cpuinfo_epyc_2vcpu.txt"),
      meminfo_path: Path.join(@dir, "meminfo.txt"),
      nvidia_smi: fn _ -> {:error, :not_found} end,
      rocm_smi: fn _ -> {:error, :not_found} end,
      proc_driver_dir: "/nonexistent",
      cudnn_header_paths: [],
      cuda_version_paths: [],
      rocm_version_paths: []
    ]
  end
end
