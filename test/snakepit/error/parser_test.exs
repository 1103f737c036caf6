defmodule Snakepit.Error.ParserTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Error.{DeviceMismatch, OutOfMemory, Parser, ShapeMismatch}

  doctest Parser

  @gib 1024 * 1024 * 1024
  @mib 1024 * 1024

  describe "parse/1 fallback" do
    test "plain Python exceptions become the struct of their class, as calls return them" do
      assert {:ok, %Error.KeyError{} = error} =
               Parser.parse(%{
                 "type" => "KeyError",
                 "message" => "'missing'",
                 "traceback" => "Traceback (most recent call last):\n  File \"x.py\""
               })

      assert error.python_type == "KeyError"
      assert error.message == "'missing'"
      assert error.python_traceback =~ "x.py"

      for {type, module} <- [
            {"ValueError", Error.ValueError},
            {"TypeError", Error.TypeError},
            {"IndexError", Error.IndexError},
            {"AttributeError", Error.AttributeError},
            {"RuntimeError", Error.RuntimeError},
            {"ImportError", Error.ImportError},
            {"CustomError", Error.PythonException}
          ] do
        assert {:ok, %^module{python_type: ^type}} =
                 Parser.parse(%{"type" => type, "message" => "m"})
      end
    end

    test "atom keys and error_type are accepted" do
      assert {:ok, %Error.ValueError{message: "bad"}} =
               Parser.parse(%{type: "ValueError", message: "bad"})

      assert {:ok, %Error.TypeError{message: "x"}} =
               Parser.parse(%{"error_type" => "TypeError", "message" => "x"})
    end

    test "invalid input" do
      assert {:error, :invalid_input} = Parser.parse("ValueError")
      assert {:error, :invalid_input} = Parser.parse(nil)
      assert {:error, :invalid_input} = Parser.parse(%{})
      assert {:error, :invalid_input} = Parser.parse(%{"type" => 42, "message" => %{}})
    end
  end

  describe "out of memory" do
    test "PyTorch 2.x CUDA message" do
      message =
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity of 79.15 GiB " <>
          "of which 1.06 GiB is free. Process 4242 has 78.08 GiB memory in use."

      assert {:ok, %OutOfMemory{} = error} =
               Parser.parse(%{"type" => "torch.OutOfMemoryError", "message" => message})

      assert error.device == {:cuda, 1}
      assert error.requested_bytes == 2 * @gib
      assert error.available_bytes == round(1.06 * @gib)
      assert error.message == "torch.OutOfMemoryError: " <> message
      assert error.suggestions != []
    end

    test "older PyTorch CUDA message with a parenthesised summary" do
      message =
        "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; " <>
          "14.56 GiB already allocated; 3.12 MiB free; 14.69 GiB reserved in total by PyTorch)"

      assert {:ok, %OutOfMemory{device: {:cuda, 0}} = error} =
               Parser.parse(%{"type" => "RuntimeError", "message" => message})

      assert error.requested_bytes == 20 * @mib
      assert error.available_bytes == round(3.12 * @mib)
    end

    test "MPS, HIP and CPU allocators" do
      mps =
        "MPS backend out of memory (MPS allocated: 17.50 GB, other allocations: 1.20 GB, " <>
          "max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool."

      assert {:ok, %OutOfMemory{device: :mps, requested_bytes: requested}} =
               Parser.parse(%{"type" => "RuntimeError", "message" => mps})

      assert requested == 256 * @mib

      hip =
        "HIP out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 63.98 GiB of which 512.00 MiB is free."

      assert {:ok, %OutOfMemory{device: {:rocm, 0}, available_bytes: available}} =
               Parser.parse(%{"type" => "torch.OutOfMemoryError", "message" => hip})

      assert available == 512 * @mib

      cpu =
        "[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: not enough memory: you tried to allocate 4096 bytes."

      assert {:ok, %OutOfMemory{device: :cpu, requested_bytes: 4096, available_bytes: 0}} =
               Parser.parse(%{"type" => "RuntimeError", "message" => cpu})

      assert {:ok, %OutOfMemory{device: :cpu, requested_bytes: 0}} =
               Parser.parse(%{"type" => "MemoryError", "message" => ""})
    end
  end

  describe "device errors" do
    test "tensors on two devices" do
      message =
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! " <>
          "(when checking argument for argument mat1 in method wrapper_CUDA_addmm)"

      assert {:ok, %DeviceMismatch{expected: {:cuda, 0}, got: :cpu} = error} =
               Parser.parse(%{"type" => "RuntimeError", "message" => message})

      assert error.message == "RuntimeError: " <> message
    end

    test "older device type message" do
      message =
        "Expected object of device type cuda but got device type cpu for argument #1 'self'"

      assert {:ok, %DeviceMismatch{expected: {:cuda, 0}, got: :cpu}} =
               Parser.parse(%{"type" => "RuntimeError", "message" => message})
    end

    test "unavailable devices" do
      for message <- [
            "Torch not compiled with CUDA enabled",
            "No CUDA GPUs are available",
            "CUDA error: invalid device ordinal"
          ] do
        assert {:ok, %DeviceMismatch{expected: {:cuda, _}, got: nil}} =
                 Parser.parse(%{"type" => "AssertionError", "message" => message})
      end

      assert {:ok, %DeviceMismatch{expected: :mps, got: nil}} =
               Parser.parse(%{
                 "type" => "RuntimeError",
                 "message" => "MPS backend is not available on this machine"
               })
    end
  end

  describe "shape errors" do
    test "torch matmul" do
      assert {:ok, %ShapeMismatch{} = error} =
               Parser.parse(%{
                 "type" => "RuntimeError",
                 "message" => "mat1 and mat2 shapes cannot be multiplied (32x100 and 200x10)"
               })

      assert %{expected: [100, 10], got: [200, 10], dimension: 0, expected_dim: 100, got_dim: 200} =
               error

      assert error.operation == "matmul"
    end

    test "numpy dot not aligned" do
      assert {:ok, %ShapeMismatch{} = error} =
               Parser.parse(%{
                 "type" => "ValueError",
                 "message" => "shapes (3,4) and (5,6) not aligned: 4 (dim 1) != 5 (dim 0)"
               })

      assert %{expected: [3, 4], got: [5, 6], dimension: 0, expected_dim: 4, got_dim: 5} = error
    end

    test "numpy broadcasting" do
      assert {:ok, %ShapeMismatch{expected: [3], got: [4], dimension: 0}} =
               Parser.parse(%{
                 "type" => "ValueError",
                 "message" => "operands could not be broadcast together with shapes (3,) (4,) "
               })
    end

    test "torch size mismatch at a dimension" do
      message =
        "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1"

      assert {:ok, %ShapeMismatch{dimension: 1, expected_dim: 3, got_dim: 4}} =
               Parser.parse(%{"type" => "RuntimeError", "message" => message})
    end

    test "generic message with two shapes" do
      message =
        "Expected input with shape [1, 3, 224, 224], got shape torch.Size([1, 4, 224, 224])"

      assert {:ok,
              %ShapeMismatch{expected: [1, 3, 224, 224], got: [1, 4, 224, 224], dimension: 1}} =
               Parser.parse(%{"type" => "ValueError", "message" => message})
    end
  end

  describe "from_grpc_error/1" do
    test "status codes and names become atoms from a fixed table" do
      assert {:ok, %Error{grpc_status: :deadline_exceeded}} =
               Parser.from_grpc_error(%{status: 4, message: "deadline"})

      assert {:ok, %Error{grpc_status: :unavailable}} =
               Parser.from_grpc_error(%{"status" => "UNAVAILABLE", "message" => "down"})

      assert {:ok, %Error{grpc_status: :unknown}} =
               Parser.from_grpc_error(%{status: "made_up_status", message: "x"})

      assert {:ok, %Error{grpc_status: :unknown}} = Parser.from_grpc_error(%{message: "x"})
    end

    test "details carrying a Python exception are parsed" do
      details =
        JSON.encode!(%{
          "type" => "ZeroDivisionError",
          "message" => "division by zero",
          "traceback" => "tb"
        })

      assert {:ok, %Error.ZeroDivisionError{python_traceback: "tb"} = error} =
               Parser.from_grpc_error(%{
                 status: :unknown,
                 message: "call failed",
                 details: details
               })

      assert error.message == "division by zero"
    end

    test "a Python-looking message is parsed" do
      assert {:ok, %OutOfMemory{device: {:cuda, 0}}} =
               Parser.from_grpc_error(%{
                 status: 2,
                 message: "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB"
               })
    end

    test "invalid input" do
      assert {:error, :invalid_input} = Parser.from_grpc_error(%{status: 14})
      assert {:error, :invalid_input} = Parser.from_grpc_error("nope")
      assert {:error, :invalid_input} = Parser.from_grpc_error(%{status: {:bad}, message: "x"})
    end
  end

  describe "extract_shape/1" do
    test "forms" do
      assert Parser.extract_shape("()") == []
      assert Parser.extract_shape("torch.Size([])") == []
      assert Parser.extract_shape("shape (-1, 28, 28)") == [-1, 28, 28]
      assert Parser.extract_shape("[ 1 ,2 ]") == [1, 2]
      assert Parser.extract_shape("2 x 3 x 4") == [2, 3, 4]
      assert Parser.extract_shape("(a, b)") == nil
      assert Parser.extract_shape(123) == nil
    end
  end
end
