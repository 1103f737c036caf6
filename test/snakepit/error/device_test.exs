defmodule Snakepit.Error.DeviceTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error.{Device, DeviceMismatch, OutOfMemory}

  doctest Device

  test "device_mismatch" do
    assert %DeviceMismatch{expected: :cpu, got: {:cuda, 0}, operation: "matmul"} =
             Device.device_mismatch(:cpu, {:cuda, 0}, "matmul")
  end

  test "device_unavailable has no got device" do
    error = Device.device_unavailable(:mps, "conv")
    assert %DeviceMismatch{expected: :mps, got: nil} = error
    assert error.message == "Device mps is not available for conv"
  end

  test "out_of_memory on a GPU suggests freeing cache and says how much is missing" do
    error =
      Device.out_of_memory({:cuda, 1}, 3 * 1024 * 1024 * 1024, 1024 * 1024 * 1024, "forward")

    assert %OutOfMemory{
             device: {:cuda, 1},
             requested_bytes: 3_221_225_472,
             available_bytes: 1_073_741_824,
             operation: "forward"
           } = error

    assert error.message ==
             "Out of memory on cuda:1 during forward: tried to allocate 3.00 GiB with 1.00 GiB available"

    assert [first | rest] = error.suggestions
    assert first =~ "2.00 GiB more than is free"
    assert Enum.any?(rest, &(&1 =~ "torch.cuda.empty_cache()"))
  end

  test "out_of_memory suggestions depend on the device" do
    cpu = Device.out_of_memory(:cpu, 0, 0)
    mps = Device.out_of_memory(:mps, 0, 0)
    refute Enum.any?(cpu.suggestions, &(&1 =~ "cuda"))
    assert Enum.any?(mps.suggestions, &(&1 =~ "torch.mps.empty_cache()"))
    assert cpu.message == "Out of memory on cpu"
    assert Enum.all?(cpu.suggestions ++ mps.suggestions, &is_binary/1)
  end

  test "out_of_memory rejects negative byte counts" do
    assert_raise FunctionClauseError, fn -> Device.out_of_memory(:cpu, -1, 0) end
  end

  test "exceptions can be raised with keyword fields" do
    assert_raise DeviceMismatch, "Device mismatch in add: expected cuda:0, got cpu", fn ->
      raise DeviceMismatch, expected: {:cuda, 0}, got: :cpu, operation: "add"
    end

    assert_raise OutOfMemory, "Out of memory on rocm:0", fn ->
      raise OutOfMemory, device: {:rocm, 0}
    end
  end
end
