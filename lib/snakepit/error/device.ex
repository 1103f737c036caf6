defmodule Snakepit.Error.Device do
  @moduledoc """
  Builders for device errors: `Snakepit.Error.DeviceMismatch` and
  `Snakepit.Error.OutOfMemory`.

  Devices are written as `:cpu`, `:mps`, `{:cuda, id}` or `{:rocm, id}`.

  Telemetry:

    * `[:snakepit, :error, :device]` - metadata `expected_device`,
      `actual_device` (`nil` when the device is unavailable), `operation`
    * `[:snakepit, :error, :oom]` - measurements `requested_bytes`,
      `available_bytes`; metadata `device`, `operation`
  """

  alias Snakepit.Error.{DeviceMismatch, Format, OutOfMemory}

  @doc """
  Creates a device mismatch error: the operation expected its inputs on
  `expected` but found one on `got`.

      iex> error = Snakepit.Error.Device.device_mismatch(:cpu, {:cuda, 0}, "matmul")
      iex> error.message
      "Device mismatch in matmul: expected cpu, got cuda:0"
  """
  @spec device_mismatch(term(), term(), String.t()) :: DeviceMismatch.t()
  def device_mismatch(expected, got, operation) when is_binary(operation) do
    DeviceMismatch.exception(expected: expected, got: got, operation: operation)
    |> emit_device()
  end

  @doc """
  Creates an error for a device that is not available (`got` is `nil`).

      iex> error = Snakepit.Error.Device.device_unavailable({:cuda, 2}, "matrix_multiply")
      iex> error.message
      "Device cuda:2 is not available for matrix_multiply"
  """
  @spec device_unavailable(term(), String.t()) :: DeviceMismatch.t()
  def device_unavailable(device, operation) when is_binary(operation) do
    DeviceMismatch.exception(
      expected: device,
      got: nil,
      operation: operation,
      message: "Device #{Format.device(device)} is not available for #{operation}"
    )
    |> emit_device()
  end

  @doc """
  Creates an out-of-memory error with recovery suggestions for the device.

      iex> error = Snakepit.Error.Device.out_of_memory({:cuda, 0}, 1024 * 1024 * 1024, 512 * 1024 * 1024)
      iex> error.message
      "Out of memory on cuda:0: tried to allocate 1.00 GiB with 512.00 MiB available"
  """
  @spec out_of_memory(term(), non_neg_integer(), non_neg_integer(), String.t() | nil) ::
          OutOfMemory.t()
  def out_of_memory(device, requested_bytes, available_bytes, operation \\ nil)
      when is_integer(requested_bytes) and requested_bytes >= 0 and
             is_integer(available_bytes) and available_bytes >= 0 and
             (is_binary(operation) or is_nil(operation)) do
    error =
      OutOfMemory.exception(
        device: device,
        requested_bytes: requested_bytes,
        available_bytes: available_bytes,
        operation: operation,
        suggestions: suggestions(device, requested_bytes, available_bytes)
      )

    Snakepit.Telemetry.emit(
      [:snakepit, :error, :oom],
      %{requested_bytes: requested_bytes, available_bytes: available_bytes},
      %{device: device, operation: operation}
    )

    error
  end

  defp emit_device(%DeviceMismatch{} = error) do
    Snakepit.Telemetry.emit([:snakepit, :error, :device], %{}, %{
      expected_device: error.expected,
      actual_device: error.got,
      operation: error.operation
    })

    error
  end

  defp suggestions(device, requested, available) do
    shortfall =
      if requested > available and requested > 0 do
        [
          "The allocation needs #{Format.bytes(requested - available)} more than is free; " <>
            "reduce the batch size or input size by at least that much"
        ]
      else
        ["Reduce the batch size or process the input in smaller chunks"]
      end

    shortfall ++ device_suggestions(device)
  end

  defp device_suggestions(:cpu) do
    [
      "Stream or memory-map large inputs instead of loading them whole",
      "Use smaller dtypes (float32 instead of float64) where precision allows",
      "Give the worker more memory or run fewer workers on this host"
    ]
  end

  defp device_suggestions(:mps) do
    [
      "Release cached memory with torch.mps.empty_cache()",
      "Use float16 to halve activation memory",
      "Close other applications: MPS shares memory with the whole system"
    ]
  end

  defp device_suggestions(_gpu) do
    [
      "Release cached blocks with torch.cuda.empty_cache() between requests",
      "Use mixed precision (float16/bfloat16) to cut activation memory",
      "Enable gradient checkpointing when training",
      "Move part of the model to the CPU or another GPU",
      "Run fewer workers per GPU so they do not compete for memory"
    ]
  end
end
