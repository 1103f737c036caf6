defmodule Snakepit.PackageErrorTest do
  use ExUnit.Case, async: true

  alias Snakepit.PackageError

  test "builds a message from type and packages" do
    error = PackageError.exception(type: :not_installed, packages: ["numpy~=1.26", "scipy"])
    assert error.message == "Python packages not installed: numpy~=1.26, scipy"
    assert error.output == nil
    assert error.suggestion == nil
  end

  test "keeps installer output and suggestion" do
    error =
      PackageError.exception(
        type: :install_failed,
        packages: ["torch"],
        output: "ERROR: No matching distribution",
        suggestion: "Check the Python version"
      )

    assert error.output =~ "No matching"
    assert_raise PackageError, ~r/installation failed: torch/, fn -> raise error end
  end

  test "an explicit message wins" do
    assert PackageError.exception(type: :version_mismatch, message: "custom").message == "custom"
  end

  test "unknown type or bad packages raise ArgumentError naming the field" do
    assert_raise ArgumentError, ~r/:type/, fn -> PackageError.exception(type: :oops) end

    assert_raise ArgumentError, ~r/:packages/, fn ->
      PackageError.exception(type: :not_installed, packages: "numpy")
    end
  end
end
