defmodule Snakepit.ToolBridgeTCPTest do
  # The same bridge over loopback TCP (config :snakepit, worker_transport: :tcp).
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.Test.AppPool

  setup_all do
    previous = Application.fetch_env(:snakepit, :worker_transport)
    Application.put_env(:snakepit, :worker_transport, :tcp)

    # Registered first, so it runs after AppPool's restore has restarted the
    # application: put the transport back and restart once more.
    on_exit(fn ->
      case previous do
        {:ok, value} -> Application.put_env(:snakepit, :worker_transport, value)
        :error -> Application.delete_env(:snakepit, :worker_transport)
      end

      Application.stop(:snakepit)
      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)

    AppPool.start!(pool_size: 1)
  end

  test "workers reach the bridge on loopback TCP" do
    assert "127.0.0.1:" <> _ = Snakepit.GRPC.BridgeServer.address()

    :ok =
      ToolRegistry.register_elixir_tool("tcp-s", "double", fn %{"n" => n} -> n * 2 end, %{
        exposed_to_python: true
      })

    assert {:ok, %{"result" => 42}} =
             Snakepit.execute_in_session("tcp-s", "call_elixir_demo", %{
               tool_name: "double",
               n: 21
             })

    assert "add" in Enum.map(ToolRegistry.list_tools("tcp-s"), & &1.name)
  end
end
