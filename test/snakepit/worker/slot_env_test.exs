defmodule Snakepit.Worker.SlotEnvTest do
  # The per-slot environment, fed with the hardware fixtures (no GPU here).
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias Snakepit.Hardware.Detector
  alias Snakepit.Worker.SlotEnv

  doctest SlotEnv

  @fixtures Path.expand("../../fixtures/hardware", __DIR__)

  defp fixture(name), do: File.read!(Path.join(@fixtures, name))

  defp machine(opts) do
    Detector.detect(Keyword.merge(Snakepit.Test.HardwareFixtures.cpu_only(), opts))
  end

  defp cuda(query) do
    machine(
      nvidia_smi: fn
        [] -> {:ok, fixture("nvidia_smi_banner_h100.txt")}
        _ -> {:ok, fixture(query)}
      end
    )
  end

  defp rocm, do: machine(rocm_smi: fn _ -> {:ok, fixture("rocm_smi_mi210.json")} end)

  defp per_worker(hardware, index, vm_env \\ %{}) do
    SlotEnv.resolve(%{name: :gpu, devices: :per_worker}, index,
      hardware: hardware,
      vm_env: vm_env
    )
  end

  describe "devices: :per_worker" do
    test "two CUDA GPUs: one each, round-robin past two workers, in nvidia-smi's order" do
      hw = cuda("nvidia_smi_query_2x4090.csv")

      assert for(i <- 0..3, do: per_worker(hw, i)) ==
               for(
                 id <- ["0", "1", "0", "1"],
                 do: {:ok, [{"CUDA_VISIBLE_DEVICES", id}, {"CUDA_DEVICE_ORDER", "PCI_BUS_ID"}]}
               )
    end

    test "one H100: every worker shares it" do
      hw = cuda("nvidia_smi_query_h100.csv")
      assert {:ok, [{"CUDA_VISIBLE_DEVICES", "0"} | _]} = per_worker(hw, 0)
      assert {:ok, [{"CUDA_VISIBLE_DEVICES", "0"} | _]} = per_worker(hw, 5)
    end

    test "a VM restricted to some GPUs spreads its workers over those, in its own order" do
      hw = cuda("nvidia_smi_query_2x4090.csv")
      vm = %{"CUDA_VISIBLE_DEVICES" => "1, 0", "CUDA_DEVICE_ORDER" => "FASTEST_FIRST"}
      assert per_worker(hw, 0, vm) == {:ok, [{"CUDA_VISIBLE_DEVICES", "1"}]}
      assert per_worker(hw, 1, vm) == {:ok, [{"CUDA_VISIBLE_DEVICES", "0"}]}
    end

    test "ROCm: HIP_VISIBLE_DEVICES only" do
      hw = rocm()
      assert hw.accelerator == :rocm
      assert length(hw.rocm.devices) == 2
      assert {:ok, [{"HIP_VISIBLE_DEVICES", "0"}]} = per_worker(hw, 0)
      assert {:ok, [{"HIP_VISIBLE_DEVICES", "1"}]} = per_worker(hw, 1)
      assert {:ok, [{"HIP_VISIBLE_DEVICES", "0"}]} = per_worker(hw, 2)
    end

    test "no GPU: nothing is set, and one warning per pool says so" do
      hw = machine([])
      assert hw.accelerator == :cpu
      config = %{name: :"cpu_#{System.unique_integer([:positive])}", devices: :per_worker}

      log =
        capture_log(fn ->
          assert {:ok, []} = SlotEnv.resolve(config, 0, hardware: hw, vm_env: %{})
          assert {:ok, []} = SlotEnv.resolve(config, 1, hardware: hw, vm_env: %{})
        end)

      assert [_one] = Regex.scan(~r/no CUDA or ROCm GPU was found/, log)
    end
  end

  describe "worker_env" do
    test "is called with the slot index first, and wins over the device" do
      hw = cuda("nvidia_smi_query_2x4090.csv")

      config = %{
        name: :p,
        devices: :per_worker,
        worker_env: {__MODULE__, :env_for, ["tag"]}
      }

      assert {:ok, env} = SlotEnv.resolve(config, 1, hardware: hw, vm_env: %{})

      assert length(env) == 4

      assert Map.new(env) == %{
               "CUDA_DEVICE_ORDER" => "PCI_BUS_ID",
               "SLOT" => "1",
               "TAG" => "tag",
               "CUDA_VISIBLE_DEVICES" => "7"
             }
    end

    test "a function that raises or returns no string map fails with a message, never raises" do
      for {fun, expected} <- [
            {:raises, "raised: boom"},
            {:not_a_map, "must return a map of strings to strings, got: :nope"},
            {:atom_values, "must return a map of strings to strings"}
          ] do
        assert {:error, message} =
                 SlotEnv.resolve(%{worker_env: {__MODULE__, fun, []}}, 0, hardware: %{})

        assert message =~ "worker_env Snakepit.Worker.SlotEnvTest.#{fun}/1"
        assert message =~ expected
      end
    end

    test "no slot index (a worker started outside a pool): nothing" do
      assert {:ok, []} = SlotEnv.resolve(%{worker_env: {__MODULE__, :raises, []}}, nil)
    end
  end

  def env_for(slot, tag),
    do: %{"SLOT" => "#{slot}", "TAG" => tag, "CUDA_VISIBLE_DEVICES" => "7"}

  def raises(_slot), do: raise("boom")
  def not_a_map(_slot), do: :nope
  def atom_values(_slot), do: %{"A" => :b}
end
