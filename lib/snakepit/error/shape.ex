defmodule Snakepit.Error.Shape do
  @moduledoc """
  Builders for `Snakepit.Error.ShapeMismatch`.

  Each builder works out which dimension differs, writes a readable message
  and emits `[:snakepit, :error, :shape_mismatch]` telemetry (metadata:
  `expected`, `got`, `dimension`, `operation`).

      iex> error = Snakepit.Error.Shape.shape_mismatch([3, 224, 224], [3, 256, 256], "conv2d")
      iex> {error.dimension, error.expected_dim, error.got_dim}
      {1, 224, 256}
  """

  alias Snakepit.Error.{Format, ShapeMismatch}

  @doc """
  Creates a shape mismatch error, locating the first dimension that differs.

  When both shapes have the same rank, `dimension`, `expected_dim` and
  `got_dim` describe the first differing dimension. When the ranks differ,
  `dimension` is `nil` and the message names both ranks.
  """
  @spec shape_mismatch([integer()], [integer()], String.t()) :: ShapeMismatch.t()
  def shape_mismatch(expected, got, operation) do
    check_shape!(expected, "expected")
    check_shape!(got, "got")
    check_operation!(operation)

    {dimension, expected_dim, got_dim} = first_difference(expected, got)

    message =
      if length(expected) == length(got) do
        nil
      else
        "Shape mismatch in #{operation}: expected #{Format.shape(expected)} " <>
          "(rank #{length(expected)}), got #{Format.shape(got)} (rank #{length(got)})"
      end

    build(
      expected: expected,
      got: got,
      dimension: dimension,
      expected_dim: expected_dim,
      got_dim: got_dim,
      operation: operation,
      message: message
    )
  end

  @doc """
  Creates an error for one known dimension whose size differs.

  `expected` and `got` (the full shapes) are left `nil`.
  """
  @spec dimension_mismatch(non_neg_integer(), integer(), integer(), String.t()) ::
          ShapeMismatch.t()
  def dimension_mismatch(dimension, expected_dim, got_dim, operation) do
    unless is_integer(dimension) and dimension >= 0 do
      raise ArgumentError,
            "dimension must be a non-negative integer, got: #{inspect(dimension)}"
    end

    unless is_integer(expected_dim) and is_integer(got_dim) do
      raise ArgumentError,
            "expected_dim and got_dim must be integers, got: " <>
              "#{inspect(expected_dim)} and #{inspect(got_dim)}"
    end

    check_operation!(operation)

    build(
      dimension: dimension,
      expected_dim: expected_dim,
      got_dim: got_dim,
      operation: operation,
      message:
        "Dimension #{dimension} mismatch in #{operation}: expected #{expected_dim}, got #{got_dim}"
    )
  end

  @doc """
  Creates an error for two shapes that cannot be broadcast together.

  Shapes are aligned from the right, as NumPy and PyTorch do; two sizes are
  compatible when they are equal or one of them is 1. `dimension` is the
  index (in the broadcast result) of the right-most incompatible pair,
  `expected_dim` is the size from `shape1` and `got_dim` the size from
  `shape2`. `expected` is `shape1` and `got` is `shape2`.
  """
  @spec broadcast_error([integer()], [integer()], String.t()) :: ShapeMismatch.t()
  def broadcast_error(shape1, shape2, operation) do
    check_shape!(shape1, "shape1")
    check_shape!(shape2, "shape2")
    check_operation!(operation)

    rank = max(length(shape1), length(shape2))
    padded1 = List.duplicate(1, rank - length(shape1)) ++ shape1
    padded2 = List.duplicate(1, rank - length(shape2)) ++ shape2

    conflict =
      Enum.zip([padded1, padded2, 0..(rank - 1)//1])
      |> Enum.reverse()
      |> Enum.find(fn {a, b, _i} -> a != b and a != 1 and b != 1 end)

    {dimension, dim1, dim2, detail} =
      case conflict do
        {a, b, i} -> {i, a, b, " (dimension #{i}: #{a} vs #{b})"}
        nil -> {nil, nil, nil, ""}
      end

    build(
      expected: shape1,
      got: shape2,
      dimension: dimension,
      expected_dim: dim1,
      got_dim: dim2,
      operation: operation,
      message:
        "Cannot broadcast shapes #{Format.shape(shape1)} and #{Format.shape(shape2)} " <>
          "in #{operation}" <> detail
    )
  end

  @doc false
  # Builds the exception from ready fields and emits telemetry; used by
  # Snakepit.Error.Parser when the Python message already names the dimension.
  @spec build(keyword()) :: ShapeMismatch.t()
  def build(fields) do
    error = ShapeMismatch.exception(fields)

    Snakepit.Telemetry.emit([:snakepit, :error, :shape_mismatch], %{}, %{
      expected: error.expected,
      got: error.got,
      dimension: error.dimension,
      operation: error.operation
    })

    error
  end

  defp first_difference(expected, got) when length(expected) == length(got) do
    expected
    |> Enum.zip(got)
    |> Enum.with_index()
    |> Enum.find_value({nil, nil, nil}, fn
      {{same, same}, _i} -> nil
      {{e, g}, i} -> {i, e, g}
    end)
  end

  defp first_difference(_expected, _got), do: {nil, nil, nil}

  defp check_shape!(shape, name) do
    unless is_list(shape) and Enum.all?(shape, &is_integer/1) do
      raise ArgumentError, "#{name} must be a list of integers, got: #{inspect(shape)}"
    end
  end

  defp check_operation!(operation) do
    unless is_binary(operation) do
      raise ArgumentError, "operation must be a string, got: #{inspect(operation)}"
    end
  end
end
