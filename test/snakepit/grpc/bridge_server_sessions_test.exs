defmodule Snakepit.GRPC.BridgeServer.SessionsTest do
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.SessionStore
  alias Snakepit.GRPC.BridgeServer.Sessions

  test "bridge sessions live in the session store" do
    id = "bridge-#{System.unique_integer([:positive])}"
    on_exit(fn -> SessionStore.delete_session(id) end)

    before = System.system_time(:millisecond)

    assert {:ok, %{session_id: ^id, metadata: %{"a" => 1}} = first} =
             Sessions.initialize(id, %{"a" => 1})

    after_init = System.system_time(:millisecond)
    assert SessionStore.session_exists?(id)
    # Made during the call, on the system clock; sessions keep whole
    # seconds, so it may read up to a second before the call began.
    assert first.created_at_ms <= after_init
    assert first.created_at_ms > before - 1_000

    # Re-initializing replaces the config and keeps the creation time.
    assert {:ok, %{metadata: %{"b" => 2}, created_at_ms: created}} =
             Sessions.initialize(id, %{"b" => 2})

    assert created == first.created_at_ms
    assert {:ok, %{metadata: %{"b" => 2}}} = Sessions.get(id)
    assert {:error, "session_id is required"} = Sessions.initialize("", %{})

    assert Sessions.delete(id)
    refute Sessions.delete(id)
    assert Sessions.get(id) == :not_found
  end
end
