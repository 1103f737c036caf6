defmodule Snakepit.StructEncodingTest do
  use ExUnit.Case, async: true
  doctest Snakepit.Python.StructEncoding

  alias Snakepit.Python.StructEncoding
  alias Snakepit.Test.{Money, Opaque, Point}

  test "each known struct becomes what Elixir's JSON / Jason write for it" do
    {:ok, ref} = Snakepit.ZeroCopy.to_dlpack(<<1>>, dtype: :uint8)

    assert {:ok, converted} =
             StructEncoding.convert(%{
               "dt" => ~U[2026-12-02 10:00:00Z],
               "naive" => ~N[2026-12-02 10:00:00.5],
               "date" => ~D[2026-12-02],
               "time" => ~T[23:59:59],
               "money" => Decimal.new(-1, 150, -2),
               "point" => %Point{x: 1, y: [2], secret: "x"},
               "own" => %Money{cents: 199, currency: "USD"},
               "ref" => ref,
               "tuple" => {~D[2026-01-01], 1}
             })

    assert converted["dt"] == "2026-12-02T10:00:00Z"
    assert converted["naive"] == "2026-12-02T10:00:00.5"
    assert converted["date"] == "2026-12-02" and converted["time"] == "23:59:59"
    assert converted["money"] == "-1.50"
    assert converted["point"] == %{"x" => 1, "y" => [2]}
    assert converted["own"] == "1.99 USD"
    # Zero-copy refs stay refs: the native core sends them by reference.
    assert converted["ref"] == ref
    assert converted["tuple"] == {"2026-01-01", 1}
  end

  test "a struct without an encoding is named with its path" do
    assert {:error, message} = StructEncoding.convert(%{a: [%{b: %Opaque{}}]})
    assert message =~ "%Snakepit.Test.Opaque{}" and message =~ " at .a[0].b"
  end
end
