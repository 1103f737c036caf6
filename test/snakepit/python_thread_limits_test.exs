defmodule Snakepit.PythonThreadLimitsTest do
  use ExUnit.Case, async: true

  alias Snakepit.PythonThreadLimits

  doctest PythonThreadLimits

  test "nil, empty map and empty list give the defaults" do
    for config <- [nil, %{}, []] do
      assert PythonThreadLimits.resolve(config) == PythonThreadLimits.defaults()
    end
  end

  test "partial overrides merge; strings are coerced; bad values keep defaults" do
    assert %{omp: 8, mkl: 3, openblas: 1, numexpr: 1, grpc_poll_threads: 2} =
             PythonThreadLimits.resolve(%{
               omp: 8,
               mkl: " 3 ",
               grpc_poll_threads: "2",
               numexpr: "many",
               openblas: -2
             })

    assert PythonThreadLimits.resolve(omp: 2.5, mkl: nil, openblas: :four) ==
             PythonThreadLimits.defaults()
  end

  test "string keys for known libraries are accepted; unknown keys ignored" do
    assert %{omp: 6} = PythonThreadLimits.resolve(%{"omp" => 6, "cuda" => 5, {:weird} => 1})
    assert map_size(PythonThreadLimits.resolve(%{"cuda" => 5})) == 5
  end

  test "property: every resolved value is a positive integer and keys are fixed" do
    values = [1, 4, 0, -1, "3", "x", nil, 2.0, :a, "  16 ", ""]
    keys = [:openblas, :omp, :mkl, :numexpr, :grpc_poll_threads, :other, "omp"]

    for _ <- 1..300 do
      config =
        Map.new(1..Enum.random(0..6)//1, fn _ -> {Enum.random(keys), Enum.random(values)} end)

      resolved = PythonThreadLimits.resolve(config)

      assert Map.keys(resolved) |> Enum.sort() == [
               :grpc_poll_threads,
               :mkl,
               :numexpr,
               :omp,
               :openblas
             ]

      assert Enum.all?(Map.values(resolved), &(is_integer(&1) and &1 > 0))
    end
  end

  test "wrong configuration types raise ArgumentError naming the setting" do
    for bad <- [42, "omp=4", [1, 2], {:omp, 4}] do
      assert_raise ArgumentError, ~r/:python_thread_limits/, fn ->
        PythonThreadLimits.resolve(bad)
      end
    end
  end
end
