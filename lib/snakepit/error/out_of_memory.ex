defmodule Snakepit.Error.OutOfMemory do
  @moduledoc """
  An allocation failed because the device ran out of memory.

  Carries the requested and available byte counts (0 when the Python side
  did not report them) and a list of `suggestions` for recovery. Build it
  with `Snakepit.Error.Device.out_of_memory/4`; `Snakepit.Error.Parser`
  produces it from Python OOM messages (CUDA, MPS, `MemoryError`).
  """

  alias Snakepit.Error.Format

  @type device :: :cpu | :mps | {:cuda, non_neg_integer()} | {:rocm, non_neg_integer()}

  @type t :: %__MODULE__{
          available_bytes: non_neg_integer(),
          device: device(),
          message: String.t(),
          operation: String.t() | nil,
          requested_bytes: non_neg_integer(),
          suggestions: [String.t()]
        }

  defexception [
    :device,
    :message,
    :operation,
    requested_bytes: 0,
    available_bytes: 0,
    suggestions: []
  ]

  @impl true
  def exception(fields) do
    error = struct!(__MODULE__, fields)
    if error.message, do: error, else: %{error | message: default_message(error)}
  end

  @doc false
  @spec default_message(t()) :: String.t()
  def default_message(%__MODULE__{} = error) do
    base = "Out of memory on #{Format.device(error.device)}"
    base = if error.operation, do: base <> " during #{error.operation}", else: base

    if error.requested_bytes > 0 do
      base <>
        ": tried to allocate #{Format.bytes(error.requested_bytes)}" <>
        " with #{Format.bytes(error.available_bytes)} available"
    else
      base
    end
  end
end
