defmodule Snakepit.Hardware.SelectorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Hardware.Selector

  doctest Selector

  @cpu %{
    cores: 8,
    threads: 16,
    model: "Test CPU",
    features: [:avx, :avx2],
    memory_total_mb: 32_000
  }

  defp info(overrides) do
    Map.merge(
      %{accelerator: :cpu, cpu: @cpu, cuda: nil, mps: nil, rocm: nil, platform: "linux-x86_64"},
      Map.new(overrides)
    )
  end

  defp cuda(n) do
    %{
      version: "12.2",
      driver_version: "535.154.05",
      cudnn_version: nil,
      devices:
        for(
          id <- 0..(n - 1),
          do: %{
            id: id,
            name: "GPU #{id}",
            memory_total_mb: 24_000,
            memory_free_mb: 20_000,
            compute_capability: "8.9"
          }
        )
    }
  end

  defp rocm,
    do: %{
      version: "6.0.2",
      devices: [%{id: 0, name: "MI210", memory_total_mb: 65_520, memory_free_mb: 65_509}]
    }

  @cpu_only %{
    accelerator: :cpu,
    cpu: @cpu,
    cuda: nil,
    mps: nil,
    rocm: nil,
    platform: "linux-x86_64"
  }

  test "CPU-only machine" do
    i = @cpu_only
    assert Selector.select(:auto, i) == {:ok, :cpu}
    assert Selector.select(:cpu, i) == {:ok, :cpu}

    for pref <- [:cuda, :mps, :rocm, {:cuda, 0}, {:rocm, 0}] do
      assert Selector.select(pref, i) == {:error, :device_not_available}
    end

    assert Selector.select_with_fallback([:cuda, :mps, :cpu], i) == {:ok, :cpu}
    assert Selector.select_with_fallback([:cuda, :mps], i) == {:error, :no_device}
    assert Selector.select_with_fallback([], i) == {:error, :no_device}
  end

  test "CUDA machine with two GPUs" do
    i = info(accelerator: :cuda, cuda: cuda(2))
    assert Selector.select(:auto, i) == {:ok, {:cuda, 0}}
    assert Selector.select(:cuda, i) == {:ok, {:cuda, 0}}
    assert Selector.select({:cuda, 1}, i) == {:ok, {:cuda, 1}}
    assert Selector.select({:cuda, 2}, i) == {:error, :device_not_available}
    assert Selector.select_with_fallback([{:cuda, 3}, {:cuda, 1}, :cpu], i) == {:ok, {:cuda, 1}}
  end

  test "ROCm and MPS machines" do
    assert Selector.select(:auto, info(rocm: rocm())) == {:ok, {:rocm, 0}}
    assert Selector.select(:rocm, info(rocm: rocm())) == {:ok, {:rocm, 0}}

    mps = info(mps: %{available: true, device_name: "Apple M2", memory_total_mb: 16_384})
    assert Selector.select(:auto, mps) == {:ok, :mps}
    assert Selector.select_with_fallback([:cuda, :mps, :cpu], mps) == {:ok, :mps}

    intel_mac = info(mps: %{available: false, device_name: "Apple GPU", memory_total_mb: 0})
    assert Selector.select(:mps, intel_mac) == {:error, :device_not_available}
  end

  test "device_info" do
    i = info(cuda: cuda(1))

    assert %{
             type: :cuda,
             device_id: 0,
             available: true,
             name: "GPU 0",
             memory_total_mb: 24_000,
             cuda_version: "12.2",
             driver_version: "535.154.05"
           } =
             Selector.device_info({:cuda, 0}, i)

    assert Selector.device_info(:cuda, i) == Selector.device_info({:cuda, 0}, i)
    assert %{type: :cuda, device_id: 4, available: false} = Selector.device_info({:cuda, 4}, i)

    assert %{type: :cpu, available: true, cores: 8, model: "Test CPU"} =
             Selector.device_info(:cpu, i)

    assert %{type: :mps, available: false} = Selector.device_info(:mps, i)

    assert %{type: :rocm, available: true, rocm_version: "6.0.2", name: "MI210"} =
             Selector.device_info({:rocm, 0}, info(rocm: rocm()))
  end

  test "unknown preferences raise ArgumentError" do
    for bad <- [:tpu, "cuda", {:cuda, -1}, {:cuda, "0"}, {:mps, 0}, nil] do
      assert_raise ArgumentError, ~r/unknown device preference/, fn ->
        Selector.select(bad, @cpu_only)
      end
    end

    assert_raise ArgumentError, ~r/unknown device preference :gpu/, fn ->
      Selector.select_with_fallback([:cpu, :gpu], @cpu_only)
    end

    assert_raise ArgumentError, ~r/list/, fn -> Selector.select_with_fallback(:cpu, @cpu_only) end
    assert_raise ArgumentError, ~r/:auto/, fn -> Selector.device_info(:auto, @cpu_only) end
  end
end
