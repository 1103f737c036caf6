defmodule Snakepit.Error.ShapeMismatch do
  @moduledoc """
  Tensor shapes do not fit the operation.

  `expected` and `got` are the full shapes when known; `dimension`,
  `expected_dim` and `got_dim` point at the first dimension that differs.
  Build it with `Snakepit.Error.Shape`; `Snakepit.Error.Parser` produces it
  from NumPy/PyTorch shape errors.
  """

  alias Snakepit.Error.Format

  @type t :: %__MODULE__{
          dimension: non_neg_integer() | nil,
          expected: [integer()] | nil,
          expected_dim: integer() | nil,
          got: [integer()] | nil,
          got_dim: integer() | nil,
          message: String.t(),
          operation: String.t() | nil
        }

  defexception [:dimension, :expected, :expected_dim, :got, :got_dim, :message, :operation]

  @impl true
  def exception(fields) do
    error = struct!(__MODULE__, fields)
    if error.message, do: error, else: %{error | message: default_message(error)}
  end

  @doc false
  @spec default_message(t()) :: String.t()
  def default_message(%__MODULE__{} = error) do
    op = if error.operation, do: " in #{error.operation}", else: ""

    shapes =
      if error.expected || error.got do
        ": expected #{Format.shape(error.expected)}, got #{Format.shape(error.got)}"
      else
        ""
      end

    dim =
      case error do
        %{dimension: nil} ->
          ""

        %{dimension: d, expected_dim: e, got_dim: g} ->
          " (dimension #{d}: expected #{e}, got #{g})"
      end

    "Shape mismatch" <> op <> shapes <> dim
  end
end
