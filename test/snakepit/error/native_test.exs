defmodule Snakepit.Error.NativeTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Error.Native, as: NativeError

  doctest Snakepit.Error.Native

  @src Path.join(File.cwd!(), "native/snakepit_native/src")
  @categories [:worker, :timeout, :python_error, :grpc_error, :validation, :pool]

  # Every kind the native core can fail with, read from error.rs, which
  # holds them all: the table in its header (`:kind` names in its rows) and
  # every atom its `Kind` enum encodes to (the errno and gRPC status tables
  # included).
  defp rust_kinds do
    error_rs = File.read!(Path.join(@src, "error.rs"))

    table =
      for "//! |" <> row <- String.split(error_rs, "\n"),
          [_, kind] <- Regex.scan(~r/`:([a-z_]+)`/, row),
          do: kind

    named = for [_, kind] <- Regex.scan(~r/atoms::([a-z_]+)\(\)/, error_rs), do: kind

    (table ++ named)
    |> Enum.uniq()
    |> Kernel.--(["ok", "error"])
    |> Enum.map(&String.to_atom/1)
  end

  describe "the Rust table" do
    test "is read (the parser still finds its kinds)" do
      kinds = rust_kinds()

      for anchor <- [:invalid_argument, :enoent, :os, :unavailable, :deadline_exceeded, :timeout],
          do: assert(anchor in kinds, "#{anchor} not found in the native sources")
    end

    test "every kind maps to a category" do
      unmapped = Enum.reject(rust_kinds(), &(NativeError.category(&1) in @categories))

      assert unmapped == [],
             "native kinds without a category in Snakepit.Error.Native: #{inspect(unmapped)}"
    end

    test "to_error gives each kind its category" do
      for kind <- rust_kinds(), kind != :tool_error do
        error = NativeError.to_error({kind, "failed"}, "op")
        assert %Error{message: "op: failed", details: %{native: ^kind}} = error
        assert error.category == NativeError.category(kind), inspect(kind)
        if error.category == :grpc_error, do: assert(error.grpc_status == kind)
      end
    end
  end

  describe "zero copy" do
    test "an invalid argument of a zero-copy NIF is a :validation error" do
      assert {:error, {:invalid_argument, _} = reason} =
               Snakepit.Native.zero_copy_create(:bogus, "x", nil, nil)

      assert %Error{category: :validation, details: %{zero_copy: :bogus}} =
               NativeError.to_error(reason, nil, %{zero_copy: :bogus})
    end

    test "the live-region limit is :validation; a worker's RESOURCE_EXHAUSTED stays :grpc_error" do
      reason = {:resource_exhausted, "past max_live_regions"}

      assert %Error{category: :validation} =
               NativeError.to_error(reason, nil, %{zero_copy: :dlpack})

      assert %Error{category: :grpc_error, grpc_status: :resource_exhausted} =
               NativeError.to_error(reason)
    end
  end

  describe "tool errors" do
    test "a caller's mistake is :validation, a cancelled tool :timeout, else the Python struct" do
      assert %Error{category: :validation, details: %{kind: "unknown_tool"}} =
               NativeError.to_error({:tool_error, "KeyError", "no tool x", "", "unknown_tool"})

      assert %Error{category: :timeout, details: %{stop: :interrupted}} =
               NativeError.to_error({:tool_error, "CallCancelled", "stopped", "", "cancelled"})

      assert %Error.ValueError{message: "bad", python_traceback: "tb"} =
               NativeError.to_error({:tool_error, "ValueError", "bad", "tb", "tool"})
    end
  end

  test "anything else is a :worker error, never a raise" do
    assert %Error{category: :worker, message: message} = NativeError.to_error(:nonsense, "op")
    assert message =~ "op: unexpected native reply: :nonsense"
    assert %Error{category: :worker} = NativeError.to_error({:made_up_kind, "m"})
    assert NativeError.category(:made_up_kind) == nil
  end
end
