defmodule Snakepit.GRPC.BridgeServerUnitTest do
  # The dispatcher's decisions, as pure functions.
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.InternalToolSpec
  alias Snakepit.GRPC.BridgeServer

  test "results become JSON replies, non-UTF-8 binaries bytes" do
    assert {:ok, %{a: 1}} = BridgeServer.tool_reply("t", {:ok, %{a: 1}})
    assert {:ok, "text ✓"} = BridgeServer.tool_reply("t", {:ok, "text ✓"})
    assert {:binary, <<255, 0>>} = BridgeServer.tool_reply("t", {:ok, <<255, 0>>})
  end

  test "failures become ToolError maps" do
    assert {:error, %{type: "ElixirError", message: "no", kind: "tool", traceback: ""}} =
             BridgeServer.tool_reply("t", {:error, "no"})

    assert {:error, %{type: "ElixirError", message: ":nope"}} =
             BridgeServer.tool_reply("t", {:error, :nope})

    assert {:error, %{type: "KeyError", message: "key :k not found"}} =
             BridgeServer.tool_reply("t", {:error, %KeyError{key: :k}})

    stack = [{M, :f, 1, [file: ~c"m.ex", line: 3]}]

    assert {:error, %{type: "ArgumentError", message: "bad", traceback: tb}} =
             BridgeServer.tool_reply(
               "t",
               {:raised, :error, %ArgumentError{message: "bad"}, stack}
             )

    assert tb =~ "m.ex:3"

    assert {:error, %{type: "throw", message: "{:x, 1}"}} =
             BridgeServer.tool_reply("t", {:raised, :throw, {:x, 1}, []})
  end

  test "the tool's budget leaves Python time to receive the timeout" do
    assert BridgeServer.budget_ms(30_000) == 29_900
    assert BridgeServer.budget_ms(150) == 75
    assert BridgeServer.budget_ms(1) == 1
    assert BridgeServer.budget_ms(0) == Snakepit.Defaults.bridge_tool_timeout_ms()
  end

  test "specs on the wire carry the ToolSpec fields only" do
    spec = %InternalToolSpec{
      name: "t",
      type: :remote,
      worker_id: "w1",
      description: "d",
      parameters: [%{name: "x", type: "int", required: true, description: "", default: 1}],
      metadata: %{version: 2, note: "n"},
      supports_streaming: true
    }

    assert BridgeServer.wire_spec(spec) == %{
             name: "t",
             description: "d",
             parameters: [%{name: "x", type: "int", required: true, description: "", default: 1}],
             supports_streaming: true,
             metadata: %{"version" => "2", "note" => "n", "type" => "remote", "worker_id" => "w1"}
           }
  end

  test "a heartbeat is answered ok; unknown sessions are not found" do
    assert :ok = BridgeServer.handle(:heartbeat, %{worker_id: "w"})

    assert :not_found =
             BridgeServer.handle(:get_session, %{session_id: "never-#{System.unique_integer()}"})
  end
end
