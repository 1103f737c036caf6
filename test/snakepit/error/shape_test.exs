defmodule Snakepit.Error.ShapeTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error.{Shape, ShapeMismatch}

  doctest Shape

  test "shape_mismatch finds the first differing dimension" do
    error = Shape.shape_mismatch([3, 224, 224], [3, 256, 256], "conv2d")

    assert %ShapeMismatch{
             expected: [3, 224, 224],
             got: [3, 256, 256],
             dimension: 1,
             expected_dim: 224,
             got_dim: 256,
             operation: "conv2d"
           } = error

    assert error.message ==
             "Shape mismatch in conv2d: expected [3, 224, 224], got [3, 256, 256] (dimension 1: expected 224, got 256)"
  end

  test "shape_mismatch with different ranks names both ranks" do
    error = Shape.shape_mismatch([2, 3], [2, 3, 1], "reshape")
    assert error.dimension == nil
    assert error.message =~ "rank 2"
    assert error.message =~ "rank 3"
  end

  test "shape_mismatch with equal shapes has no dimension" do
    assert %ShapeMismatch{dimension: nil} = Shape.shape_mismatch([1, 2], [1, 2], "noop")
  end

  test "dimension_mismatch" do
    error = Shape.dimension_mismatch(2, 64, 32, "linear")

    assert %ShapeMismatch{dimension: 2, expected_dim: 64, got_dim: 32, expected: nil, got: nil} =
             error

    assert error.message == "Dimension 2 mismatch in linear: expected 64, got 32"
  end

  test "broadcast_error points at the right-most incompatible dimension" do
    error = Shape.broadcast_error([8, 1, 6, 1], [7, 1, 5], "add")
    # aligned: [8,1,6,1] vs [1,7,1,5] -> index 3 is 1 vs 5 (ok), index 2 is 6 vs 1 (ok),
    # index 1 is 1 vs 7 (ok): the shapes broadcast, so no dimension.
    assert error.dimension == nil

    error = Shape.broadcast_error([3, 4], [5], "add")

    assert %ShapeMismatch{dimension: 1, expected_dim: 4, got_dim: 5, expected: [3, 4], got: [5]} =
             error

    assert error.message == "Cannot broadcast shapes [3, 4] and [5] in add (dimension 1: 4 vs 5)"
  end

  test "bad arguments raise ArgumentError" do
    assert_raise ArgumentError, ~r/expected must be a list of integers/, fn ->
      Shape.shape_mismatch([1.5], [1], "x")
    end

    assert_raise ArgumentError, ~r/operation/, fn -> Shape.shape_mismatch([1], [2], :x) end
    assert_raise ArgumentError, ~r/dimension/, fn -> Shape.dimension_mismatch(-1, 1, 2, "x") end
  end

  test "ShapeMismatch can be raised directly" do
    assert_raise ShapeMismatch, "Shape mismatch in mm: expected [1], got [2]", fn ->
      raise ShapeMismatch, expected: [1], got: [2], operation: "mm"
    end
  end
end
