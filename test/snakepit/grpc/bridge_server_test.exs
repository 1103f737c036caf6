defmodule Snakepit.GRPC.BridgeServerTest do
  # The bridge server, called the way workers call it (a Python gRPC client,
  # test/fixtures/python/bridge_probe.py), without a pool.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.GRPC.BridgeServer
  alias Snakepit.Native
  alias Snakepit.Test.AppPool

  @probe Path.expand("../../fixtures/python/bridge_probe.py", __DIR__)

  # Runs the probe against `address` in a task, so the test process can act
  # as the dispatcher meanwhile.
  defp probe_async(address, ops) do
    {:ok, python} = Snakepit.PythonRuntime.executable()
    env = Snakepit.PythonRuntime.worker_env()

    # Started through the native core with the VM's secret, as a worker
    # would be: the bridge answers nothing else.
    Task.async(fn ->
      {:ok, out} =
        Snakepit.OS.Command.run(python, [@probe, address, JSON.encode!(ops)],
          env: env,
          with_secret: true,
          timeout_ms: 20_000
        )

      out |> String.split("\n", trim: true) |> Enum.map(&JSON.decode!/1)
    end)
  end

  defp probe(address, ops), do: address |> probe_async(ops) |> Task.await(20_000)

  defp tmp_socket(name) do
    dir =
      Path.join(System.tmp_dir!(), "snakepit-bridge-test-#{System.unique_integer([:positive])}")

    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    Path.join(dir, name)
  end

  defp start_native(dispatcher \\ self(), timeout_ms \\ 5_000) do
    path = tmp_socket("b.sock")
    assert {:ok, {handle, address}} = Native.bridge_start("unix:" <> path, dispatcher, timeout_ms)
    on_exit(fn -> Native.bridge_stop(handle) end)
    {handle, address, path}
  end

  describe "the native server" do
    test "listens on a private socket and forwards calls with their request" do
      {_handle, address, path} = start_native()
      assert address == "unix:" <> path
      assert %File.Stat{mode: mode} = File.stat!(path)
      assert Bitwise.band(mode, 0o777) == 0o600

      task =
        probe_async(address, [
          %{rpc: "heartbeat", worker_id: "w1"},
          %{
            rpc: "execute",
            session_id: "s",
            tool_name: "t",
            args_json: ~s({"n": 9007199254740993, "f": 1.5, "l": [null, true]}),
            # Latin-1 code points become bytes in the probe: <<0, 255>>.
            binary_parameters: %{"blob" => "\u0000\u00ff"},
            metadata: %{"correlation_id" => "c1"},
            timeout_ms: 4_000
          }
        ])

      assert_receive {:snakepit_bridge, call, :heartbeat, %{worker_id: "w1"}}, 10_000
      assert :ok = Native.bridge_reply(call, :ok)
      assert {:error, {:already_replied, _}} = Native.bridge_reply(call, :ok)

      assert_receive {:snakepit_bridge, call, :execute_elixir_tool, request}, 10_000

      assert request == %{
               session_id: "s",
               tool_name: "t",
               args: %{"n" => 9_007_199_254_740_993, "f" => 1.5, "l" => [nil, true]},
               # Latin-1 code points become bytes in the probe: <<0, 255>>.
               binary_parameters: %{"blob" => <<0, 255>>},
               metadata: %{"correlation_id" => "c1"},
               timeout_ms: 4_000,
               worker_id: "probe-worker"
             }

      assert :ok = Native.bridge_reply(call, {:ok, %{n: 1, list: [1, 2.5, nil]}})

      assert [%{"ok" => true, "status" => "ok"}, executed] = Task.await(task, 20_000)
      assert executed["success"] == true
      assert JSON.decode!(executed["result_json"]) == %{"n" => 1, "list" => [1, 2.5, nil]}
    end

    test "malformed or non-UTF-8 arguments are refused before they reach the BEAM" do
      {_handle, address, _} = start_native()

      results =
        probe(address, [
          %{rpc: "execute", tool_name: "t", args_json: ~s({"a": )},
          %{rpc: "execute", tool_name: "t", args_json: ~s({"a": "\u00ff"})},
          %{rpc: "execute", tool_name: "t", args_json: "[1]"},
          %{rpc: "execute", tool_name: "", args_json: "{}"}
        ])

      assert [bad_json, non_utf8, array, nameless] = results
      assert %{"success" => false, "error" => %{"type" => "SerializationError"}} = bad_json
      assert bad_json["error"]["message"] =~ "not valid JSON"
      assert non_utf8["error"]["kind"] == "serialization"
      assert array["error"]["message"] =~ "must be a JSON object"
      assert nameless["error"]["kind"] == "unknown_tool"
      refute_received {:snakepit_bridge, _, _, _}
    end

    test "an unreadable reply is refused and the call gets an error naming the problem" do
      {_handle, address, _} = start_native()

      task =
        probe_async(address, [
          %{rpc: "execute", tool_name: "t", args_json: "{}"},
          %{rpc: "heartbeat"},
          %{rpc: "execute", tool_name: "t", args_json: "{}"}
        ])

      assert_receive {:snakepit_bridge, call, :execute_elixir_tool, _}, 10_000
      assert {:error, {:invalid_argument, message}} = Native.bridge_reply(call, {:weird, 1, 2})
      assert message =~ "reply"
      assert_receive {:snakepit_bridge, call, :heartbeat, _}, 10_000
      assert {:error, {:invalid_argument, _}} = Native.bridge_reply(call, 42)
      assert_receive {:snakepit_bridge, call, :execute_elixir_tool, _}, 10_000
      # A result JSON cannot hold is answered as a serialization error.
      assert :ok = Native.bridge_reply(call, {:ok, %{pid: self()}})

      assert [execute, heartbeat, unencodable] = Task.await(task, 20_000)
      assert execute["error"]["type"] == "ElixirBridgeError"
      assert execute["error"]["message"] =~ "unreadable reply"
      assert heartbeat == %{"code" => "INTERNAL", "details" => heartbeat["details"]}
      assert heartbeat["details"] =~ "unreadable reply"
      assert unencodable["error"]["kind"] == "serialization"
      assert unencodable["error"]["message"] =~ "pid"
    end

    test "an unanswered call times out on its own; a late reply is refused" do
      {_handle, address, _} = start_native()
      task = probe_async(address, [%{rpc: "execute", tool_name: "slow", timeout_ms: 50}])
      assert_receive {:snakepit_bridge, call, :execute_elixir_tool, %{timeout_ms: 50}}, 10_000

      assert [%{"error" => %{"type" => "TimeoutError", "kind" => "timeout"}}] =
               Task.await(task, 20_000)

      assert {:error, {:expired, _}} = Native.bridge_reply(call, {:ok, 1})
    end

    test "a call its dispatcher drops is answered at once, and so are calls after it died" do
      parent = self()

      dispatcher =
        spawn(fn ->
          receive do
            {:snakepit_bridge, _call, rpc, _} -> send(parent, {:dropping, rpc})
          end
        end)

      ref = Process.monitor(dispatcher)
      {_handle, address, _} = start_native(dispatcher, 60_000)
      started = System.monotonic_time(:millisecond)

      results =
        probe(address, [
          %{rpc: "execute", tool_name: "t", timeout_ms: 60_000},
          %{rpc: "heartbeat"}
        ])

      assert_received {:dropping, :execute_elixir_tool}
      assert_received {:DOWN, ^ref, :process, ^dispatcher, :normal}
      assert [dropped, after_death] = results
      assert dropped["error"]["message"] =~ "without answering"
      assert after_death == %{"code" => "UNAVAILABLE", "details" => after_death["details"]}
      assert after_death["details"] =~ "not running"
      # Nowhere near the 60 s budget.
      assert System.monotonic_time(:millisecond) - started < 20_000
    end

    test "stopping answers pending calls and removes the socket" do
      {handle, address, path} = start_native()
      task = probe_async(address, [%{rpc: "heartbeat"}])
      assert_receive {:snakepit_bridge, _call, :heartbeat, _}, 10_000
      assert :ok = Native.bridge_stop(handle)
      assert [%{"code" => "UNAVAILABLE", "details" => details}] = Task.await(task, 20_000)
      assert details =~ "shutting down"
      refute File.exists?(path)
      assert :ok = Native.bridge_stop(handle)
    end

    test "loopback TCP works; other addresses are refused with a reason" do
      assert {:ok, {handle, "127.0.0.1:" <> port}} =
               Native.bridge_start("127.0.0.1:0", self(), 5_000)

      on_exit(fn -> Native.bridge_stop(handle) end)
      assert String.to_integer(port) > 0
      task = probe_async("127.0.0.1:" <> port, [%{rpc: "heartbeat"}])
      assert_receive {:snakepit_bridge, call, :heartbeat, _}, 10_000
      :ok = Native.bridge_reply(call, :ok)
      assert [%{"ok" => true}] = Task.await(task, 20_000)

      for {address, kind, why} <- [
            {"0.0.0.0:0", :invalid_argument, "loopback"},
            {"unix:relative.sock", :invalid_argument, "absolute"},
            {"unix:/no/such/dir/b.sock", :enoent, "cannot listen"},
            {"nonsense", :invalid_argument, "neither"}
          ] do
        assert {:error, {^kind, message}} = Native.bridge_start(address, self(), 1_000)
        assert message =~ why
      end
    end

    test "an existing file that is not a socket is never replaced" do
      path = tmp_socket("not-a-socket")
      File.write!(path, "data")

      assert {:error, {kind, message}} = Native.bridge_start("unix:" <> path, self(), 1)
      assert is_atom(kind) and kind != :ok
      assert message =~ "not a socket"
      assert File.read!(path) == "data"
    end
  end

  describe "the application's bridge" do
    setup do
      session = "probe-#{System.unique_integer([:positive])}"

      on_exit(fn ->
        if Process.whereis(ToolRegistry), do: ToolRegistry.cleanup_session(session)
      end)

      {:ok, session: session, address: BridgeServer.address()}
    end

    test "lives in the runtime directory" do
      assert BridgeServer.address() ==
               "unix:" <> Path.join(Snakepit.OS.RuntimeDir.path(), "bridge.sock")
    end

    test "registers a worker's tools and lists exposed Elixir tools", %{session: s, address: a} do
      :ok =
        ToolRegistry.register_elixir_tool(s, "shown", fn _ -> 1 end, %{
          exposed_to_python: true,
          description: "a shown tool",
          parameters: [%{name: "x", type: :integer, required: true, default: 3}],
          owner: :team_a
        })

      :ok = ToolRegistry.register_elixir_tool(s, "hidden", fn _ -> 1 end)

      [registered, exposed] =
        probe(a, [
          %{
            rpc: "register_tools",
            session_id: s,
            tools: [
              %{
                name: "py_tool",
                description: "from Python",
                supports_streaming: true,
                parameters: [
                  %{name: "text", type: "str", required: true},
                  %{name: "n", type: "int", required: false, default_json: "5"}
                ]
              }
            ]
          },
          %{rpc: "get_exposed", session_id: s}
        ])

      assert registered == %{
               "success" => true,
               "tool_ids" => %{"py_tool" => "#{s}/py_tool"},
               "error_message" => ""
             }

      assert {:ok, py} = ToolRegistry.get_tool(s, "py_tool")
      assert py.type == :remote
      assert py.worker_id == "probe-worker"
      assert py.supports_streaming

      assert py.parameters == [
               %{name: "text", type: "str", required: true, description: ""},
               %{name: "n", type: "int", required: false, description: "", default: 5}
             ]

      # Global tools other tests registered are listed too.
      exposed = Map.new(exposed["tools"], &{&1["name"], &1})
      refute Map.has_key?(exposed, "hidden")
      shown = exposed["shown"]
      assert shown["name"] == "shown"
      assert shown["description"] == "a shown tool"
      assert shown["metadata"] == %{"owner" => ":team_a", "type" => "local"}

      assert [%{"name" => "x", "type" => "integer", "required" => true, "default_json" => "3"}] =
               shown["parameters"]
    end

    test "registration with an invalid spec is refused with a message", %{session: s, address: a} do
      assert [%{"success" => false, "error_message" => message}] =
               probe(a, [%{rpc: "register_tools", session_id: s, tools: [%{name: ""}]}])

      assert message =~ "tool name"
    end

    test "sessions: initialize, get, cleanup", %{session: s, address: a} do
      :ok = ToolRegistry.register_elixir_tool(s, "own", fn _ -> 1 end)

      [init, got, bad_config, missing_id, cleaned, gone] =
        probe(a, [
          %{rpc: "initialize_session", session_id: s, config_json: ~s({"model": "m1", "k": 2})},
          %{rpc: "get_session", session_id: s},
          %{rpc: "initialize_session", session_id: s, config_json: "{oops"},
          %{rpc: "initialize_session", session_id: ""},
          %{rpc: "cleanup_session", session_id: s},
          %{rpc: "get_session", session_id: s}
        ])

      assert init["success"] == true
      assert "own" in Enum.map(init["tools"], & &1["name"])
      assert got["found"] == true
      assert got["session_id"] == s
      assert JSON.decode!(got["metadata_json"]) == %{"model" => "m1", "k" => 2}
      assert is_integer(got["tool_count"]) and got["tool_count"] >= 1
      assert bad_config["success"] == false
      assert bad_config["error_message"] =~ "not valid JSON"
      assert missing_id["error_message"] =~ "session_id is required"
      assert cleaned == %{"success" => true, "resources_cleaned" => 2}
      assert gone["found"] == false
      assert {:error, :not_found} = ToolRegistry.get_tool(s, "own")
    end

    test "heartbeat answers; a telemetry stream is told at once whether to send", %{address: a} do
      # Nobody here listens to Python events, so forwarding is off.
      refute Snakepit.Telemetry.has_handlers?([:snakepit, :python])

      assert [%{"ok" => true, "status" => "ok"}, %{"forwarding" => %{"active" => false}}] =
               probe(a, [%{rpc: "heartbeat"}, %{rpc: "telemetry"}])
    end

    test "a restarted dispatcher listens at the same address" do
      address = BridgeServer.address()
      pid = Process.whereis(BridgeServer)
      ref = Process.monitor(pid)
      Process.exit(pid, :kill)
      assert_receive {:DOWN, ^ref, :process, ^pid, :killed}

      assert AppPool.wait_until(
               fn ->
                 new = Process.whereis(BridgeServer)
                 new != nil and new != pid and BridgeServer.address() != nil
               end,
               5_000
             ) != :timeout

      assert BridgeServer.address() == address
      assert [%{"ok" => true}] = probe(address, [%{rpc: "heartbeat"}])
    end
  end
end
