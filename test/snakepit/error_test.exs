defmodule Snakepit.ErrorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error

  doctest Snakepit.Error

  describe "constructors" do
    test "each category gets its constructor" do
      assert %Error{category: :worker, details: %{}} = Error.worker_error("crashed")

      assert %Error{category: :timeout, details: %{timeout_ms: 5}} =
               Error.timeout_error("t", %{timeout_ms: 5})

      assert %Error{category: :validation} = Error.validation_error("bad")
      assert %Error{category: :pool} = Error.pool_error("full")
    end

    test "grpc_error keeps the status" do
      error = Error.grpc_error(:unavailable, "down", %{port: 1})
      assert error.category == :grpc_error
      assert error.grpc_status == :unavailable
      assert error.details == %{port: 1}
      assert error.python_traceback == nil
    end

    test "python_error prefixes the type and keeps the traceback" do
      error =
        Error.python_error("KeyError", "'x'", "Traceback (most recent call last):\n", %{
          function: "f"
        })

      assert error.message == "KeyError: 'x'"
      assert error.details == %{function: "f", exception_type: "KeyError"}
      assert error.python_traceback =~ "Traceback"
    end

    test "python_error accepts a nil traceback" do
      assert %Error{python_traceback: nil} = Error.python_error("ValueError", "x", nil)
    end

    test "errors are exceptions with a readable message" do
      error = Error.pool_error("Pool not found")
      assert Exception.message(error) == "[pool] Pool not found"
      assert_raise Error, "[pool] Pool not found", fn -> raise error end
    end
  end
end
