defmodule Snakepit.Error.DeviceMismatch do
  @moduledoc """
  Raised or returned when an operation needs its tensors on one device but
  found them on different devices, or when the requested device is not
  available at all (then `got` is `nil`).

  Build it with `Snakepit.Error.Device.device_mismatch/3` or
  `Snakepit.Error.Device.device_unavailable/2`, or raise it directly:

      raise Snakepit.Error.DeviceMismatch, expected: {:cuda, 0}, got: :cpu, operation: "matmul"
  """

  alias Snakepit.Error.Format

  @type device :: :cpu | :mps | {:cuda, non_neg_integer()} | {:rocm, non_neg_integer()}

  @type t :: %__MODULE__{
          expected: device() | nil,
          got: device() | nil,
          message: String.t(),
          operation: String.t() | nil
        }

  defexception [:expected, :got, :message, :operation]

  @impl true
  def exception(fields) do
    error = struct!(__MODULE__, fields)
    if error.message, do: error, else: %{error | message: default_message(error)}
  end

  @doc false
  @spec default_message(t()) :: String.t()
  def default_message(%__MODULE__{expected: expected, got: nil, operation: op}) do
    "Device #{Format.device(expected)} is not available" <> in_op(op)
  end

  def default_message(%__MODULE__{expected: expected, got: got, operation: op}) do
    "Device mismatch" <>
      in_op(op) <> ": expected #{Format.device(expected)}, got #{Format.device(got)}"
  end

  defp in_op(nil), do: ""
  defp in_op(op), do: " in #{op}"
end
