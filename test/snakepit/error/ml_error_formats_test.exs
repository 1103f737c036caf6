defmodule Snakepit.Error.MLErrorFormatsTest do
  # The real message formats of PyTorch, NumPy, JAX and TensorFlow for
  # device, shape and out-of-memory errors, one test per format: each must
  # become its structured error, with what it says pulled out.
  use ExUnit.Case, async: true

  alias Snakepit.Error.{DeviceMismatch, OutOfMemory, Parser, ShapeMismatch}

  @gib 1024 * 1024 * 1024
  @mib 1024 * 1024

  # {library (where the format comes from), exception type, message, expected fields}
  @device_mismatch [
    {"torch 1.x-2.x, two devices", "RuntimeError",
     "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!",
     expected: {:cuda, 0}, got: :cpu},
    {"torch, short form", "RuntimeError",
     "Expected all tensors to be on the same device, but found cuda:0 and cpu!",
     expected: {:cuda, 0}, got: :cpu},
    {"torch, two GPUs", "RuntimeError",
     "Expected all tensors to be on the same device, but found at least two devices, cuda:1 and cuda:0!",
     expected: {:cuda, 1}, got: {:cuda, 0}},
    {"torch 2.x, per argument", "RuntimeError",
     "Expected all tensors to be on the same device, but got mat2 is on cpu, different from " <>
       "other tensors on cuda:0 (when checking argument in method wrapper_CUDA_mm)",
     expected: {:cuda, 0}, got: :cpu},
    {"torch 1.x, device type", "RuntimeError",
     "Expected object of device type cuda but got device type cpu for argument #1 'self' in " <>
       "call to _th_mm", expected: {:cuda, 0}, got: :cpu},
    {"torch, CPU where a GPU was expected", "RuntimeError",
     "Tensor for argument #2 'mat1' is on CPU, but expected it to be on GPU (while checking " <>
       "arguments for addmm)", expected: {:cuda, 0}, got: :cpu},
    {"torch conv, input on GPU, weights on CPU", "RuntimeError",
     "Input type (torch.cuda.FloatTensor) and weight type (torch.FloatTensor) should be the same",
     expected: :cpu, got: {:cuda, 0}},
    {"torch conv, input on CPU, weights on GPU", "RuntimeError",
     "Input type (torch.FloatTensor) and weight type (torch.cuda.FloatTensor) should be the " <>
       "same or input should be a MKLDNN tensor and weight is a dense tensor",
     expected: {:cuda, 0}, got: :cpu},
    {"torch cudnn, two GPU ordinals", "RuntimeError",
     "Expected tensor for argument #1 'input' to have the same device as tensor for argument " <>
       "#2 'weight'; but device 0 does not equal 1 (while checking arguments for " <>
       "cudnn_convolution)", expected: {:cuda, 1}, got: {:cuda, 0}},
    {"jax, jit across platforms", "ValueError",
     "Received incompatible devices for jitted computation. Got argument x of f with shape " <>
       "float32[3] and device ids [0] on platform GPU and argument y of f with shape " <>
       "float32[3] and device ids [0] on platform CPU", expected: {:cuda, 0}, got: :cpu}
  ]

  @device_unavailable [
    {"torch, no GPU", "RuntimeError", "No CUDA GPUs are available", {:cuda, 0}},
    {"torch, bad ordinal", "RuntimeError", "CUDA error: invalid device ordinal", {:cuda, 0}},
    {"torch, CPU-only build", "AssertionError", "Torch not compiled with CUDA enabled",
     {:cuda, 0}},
    {"torch, MPS", "RuntimeError", "MPS backend is not available on this machine", :mps},
    {"tensorflow, explicit device", "InvalidArgumentError",
     "Cannot assign a device for operation MatMul: Could not satisfy explicit device " <>
       "specification '/device:GPU:1' because no devices matching that specification are " <>
       "registered in this process", {:cuda, 1}}
  ]

  @shape [
    {"torch matmul", "RuntimeError",
     "mat1 and mat2 shapes cannot be multiplied (32x100 and 200x10)",
     expected: [100, 10], got: [200, 10]},
    {"numpy dot", "ValueError", "shapes (3,4) and (5,6) not aligned: 4 (dim 1) != 5 (dim 0)",
     expected: [3, 4], got: [5, 6]},
    {"numpy broadcast", "ValueError",
     "operands could not be broadcast together with shapes (3,) (4,) ", expected: [3], got: [4]},
    {"torch elementwise", "RuntimeError",
     "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1",
     dimension: 1},
    {"tensorflow / jax reshape-style", "ValueError",
     "Incompatible shapes: expected shape [2, 3] but got shape [3, 2]",
     expected: [2, 3], got: [3, 2]}
  ]

  @oom [
    {"torch 2.x CUDA", "torch.OutOfMemoryError",
     "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 1 has a total capacity of 79.15 GiB " <>
       "of which 1.06 GiB is free.", device: {:cuda, 1}, requested_bytes: 2 * @gib},
    {"torch 1.x CUDA", "RuntimeError",
     "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB total capacity; " <>
       "14.56 GiB already allocated; 3.12 MiB free; 14.69 GiB reserved in total by PyTorch)",
     device: {:cuda, 0}, requested_bytes: 20 * @mib},
    {"torch MPS", "RuntimeError",
     "MPS backend out of memory (MPS allocated: 1.00 GiB, other allocations: 0 bytes, max " <>
       "allowed: 2.00 GiB). Tried to allocate 512.00 MiB on private pool.",
     device: :mps, requested_bytes: 512 * @mib},
    {"numpy", "numpy.core._exceptions._ArrayMemoryError",
     "Unable to allocate 7.45 GiB for an array with shape (1000000000,) and data type float64",
     device: :cpu},
    {"python", "MemoryError", "", device: :cpu},
    {"jax / XLA", "XlaRuntimeError",
     "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes.",
     device: :cpu, requested_bytes: 4_294_967_296},
    {"tensorflow", "ResourceExhaustedError",
     "OOM when allocating tensor with shape[8192,8192] and type float on " <>
       "/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc", device: {:cuda, 0}}
  ]

  defp parse(type, message), do: Parser.parse(%{"type" => type, "message" => message})

  for {what, type, message, fields} <- @device_mismatch do
    test "device mismatch: #{what}" do
      assert {:ok, %DeviceMismatch{} = error} = parse(unquote(type), unquote(message))
      for {key, value} <- unquote(fields), do: assert(Map.fetch!(error, key) == value)
      assert error.message =~ unquote(message)
    end
  end

  for {what, type, message, device} <- @device_unavailable do
    test "device unavailable: #{what}" do
      # An unavailable device is a mismatch with nothing to run on.
      assert {:ok, %DeviceMismatch{got: nil} = error} = parse(unquote(type), unquote(message))
      assert error.expected == unquote(Macro.escape(device))
    end
  end

  for {what, type, message, fields} <- @shape do
    test "shape: #{what}" do
      assert {:ok, %ShapeMismatch{} = error} = parse(unquote(type), unquote(message))
      for {key, value} <- unquote(fields), do: assert(Map.fetch!(error, key) == value)
    end
  end

  for {what, type, message, fields} <- @oom do
    test "out of memory: #{what}" do
      assert {:ok, %OutOfMemory{} = error} = parse(unquote(type), unquote(message))
      for {key, value} <- unquote(fields), do: assert(Map.fetch!(error, key) == value)
    end
  end
end
