defmodule Snakepit.ToolBridgeTest do
  # Python tools calling Elixir tools through the real bridge server, with
  # real workers running test/fixtures/python/bridge_test_adapter.py.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  @fixtures Path.expand("../fixtures/python", __DIR__)

  # What may sit between a streaming Python producer and its Elixir
  # consumer, so how far the producer can run ahead: the stream window
  # (chunks delivered but not yet acknowledged by the callback), the
  # producer's own buffer (SNAKEPIT_STREAM_BUFFER items, set here), the
  # HTTP/2 stream window of the native client (8 MiB, STREAM_WINDOW in
  # native/snakepit_native/src/grpc/unary.rs) and a few items in transit
  # (the one the generator holds, one in gRPC's write path, one in the socket).
  @producer_buffer 8
  @http2_stream_window 8 * 1024 * 1024
  @in_transit 4

  defp max_produced(acked, window, payload_bytes),
    do: acked + window + @producer_buffer + div(@http2_stream_window, payload_bytes) + @in_transit

  setup_all do
    python_path = Enum.join([@fixtures | Snakepit.PythonRuntime.python_path()], ":")

    AppPool.start!(
      pool_size: 2,
      adapter_args: ["--adapter", "bridge_test_adapter.BridgeTestAdapter"],
      adapter_env: [
        {"PYTHONPATH", python_path},
        {"SNAKEPIT_STREAM_BUFFER", Integer.to_string(@producer_buffer)}
      ]
    )

    # Both workers, not just the first (the concurrency test needs two).
    assert AppPool.wait_until(fn -> length(Snakepit.list_workers()) == 2 end, 30_000) != :timeout
    :ok
  end

  setup do
    session = "bridge-#{System.unique_integer([:positive])}"
    on_exit(fn -> if Process.whereis(ToolRegistry), do: ToolRegistry.cleanup_session(session) end)
    {:ok, session: session}
  end

  defp register!(session, name, handler, meta \\ %{exposed_to_python: true}) do
    :ok = ToolRegistry.register_elixir_tool(session, name, handler, meta)
  end

  describe "tools registered by workers" do
    test "show in list_tools with parameters from their signatures", %{session: session} do
      tools = Map.new(ToolRegistry.list_tools(session), &{&1.name, &1})

      assert %{type: :remote, worker_id: "default_worker_" <> _} = tools["add"]

      assert [%{name: "a", required: true}, %{name: "b", required: true}] =
               tools["add"].parameters

      stream_data = tools["stream_data"]
      assert stream_data.supports_streaming

      assert [%{name: "count", default: 5}, %{name: "delay", default: +0.0}] =
               stream_data.parameters

      assert tools["process_text"].description =~ "Text operations"
      assert [%{description: "the input text."} | _] = tools["process_text"].parameters
      # Tools only the fixture has prove the adapter's own tools register too.
      assert Map.has_key?(tools, "endless")
    end
  end

  describe "Python calling Elixir" do
    test "call_elixir_demo round-trips every JSON type, integers stay integers",
         %{session: session} do
      parent = self()

      register!(session, "mirror", fn params ->
        send(parent, {:mirror_saw, params})
        {:ok, params}
      end)

      payload = %{
        "big" => 9_007_199_254_740_993,
        "neg" => -7,
        "zero" => 0,
        "float" => 2.5,
        "whole_float" => 3.0,
        "str" => "héllo ✓ 🐍",
        "empty" => "",
        "bools" => [true, false],
        "null" => nil,
        "list" => [1, "two", 3.5, nil, [%{}]],
        "map" => %{"nested" => %{"deep" => [1, 2]}}
      }

      assert {:ok, reply} =
               Snakepit.execute_in_session(
                 session,
                 "call_elixir_demo",
                 Map.put(payload, "tool_name", "mirror")
               )

      assert_receive {:mirror_saw, seen}
      assert seen == payload
      assert is_integer(seen["big"]) and is_float(seen["whole_float"])
      assert reply["result"] == payload
      assert is_integer(reply["result"]["big"]) and is_float(reply["result"]["whole_float"])
      assert reply["session_id"] == session
      assert reply["success"] == true
    end

    test "the documented hash example, through the elixir_tools proxy", %{session: session} do
      register!(
        session,
        "calculate_hash",
        fn params ->
          hash = :crypto.hash(:sha256, params["data"]) |> Base.encode16()
          %{hash: hash, algorithm: "sha256"}
        end,
        %{
          description: "Calculate SHA256 hash of data",
          exposed_to_python: true,
          parameters: [%{name: "data", type: "str", required: true}]
        }
      )

      register!(session, "hidden", fn _ -> :secret end, %{exposed_to_python: false})

      expected = %{
        "hash" => "2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
        "algorithm" => "sha256"
      }

      assert {:ok, out} =
               Snakepit.execute_in_session(session, "via_proxy", %{
                 name: "calculate_hash",
                 data: "hello"
               })

      assert out["item"] == expected
      assert out["attr"] == expected
      assert out["has_tool"] == true
      assert "calculate_hash" in out["names"]
      refute "hidden" in out["names"]

      [described] = Enum.filter(out["described"], &(&1["name"] == "calculate_hash"))
      assert described["description"] == "Calculate SHA256 hash of data"
      assert [%{"name" => "data", "type" => "str", "required" => true}] = described["parameters"]
    end

    test "session tools shadow global ones, and a session sees only its own",
         %{session: session} do
      global = "scoped-#{System.unique_integer([:positive])}"

      :ok =
        ToolRegistry.register_elixir_tool(global, fn _ -> "global" end, %{exposed_to_python: true})

      register!(session, global, fn _ -> "session" end)

      assert {:ok, %{"result" => "session"}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: global})

      assert {:ok, %{"result" => "global"}} =
               Snakepit.execute_in_session("another-session", "try_elixir", %{name: global})

      assert {:ok, %{"result" => "global"}} =
               Snakepit.execute("try_elixir", %{name: global})
    end

    test "an unknown or unexposed Elixir tool is a structured error; the bridge stays up",
         %{session: session} do
      register!(session, "private", fn _ -> :ok end, %{exposed_to_python: false})
      register!(session, "fine", fn _ -> "fine" end)
      bridge = Process.whereis(Snakepit.GRPC.BridgeServer)

      assert {:ok,
              %{"error" => true, "type" => "ToolNotFoundError", "kind" => "unknown_tool"} = e} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "no_such_tool"})

      assert e["message"] =~ "no_such_tool"
      assert e["message"] =~ "fine"

      assert {:ok, %{"type" => "ToolNotExposedError", "kind" => "not_exposed", "message" => msg}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "private"})

      assert msg =~ "exposed_to_python"

      # A Python tool is not an Elixir tool either.
      assert {:ok, %{"kind" => "not_exposed"}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "add"})

      assert {:ok, %{"result" => "fine"}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "fine"})

      assert Process.whereis(Snakepit.GRPC.BridgeServer) == bridge
    end

    test "an uncaught Elixir tool error fails the Python tool with ElixirToolError",
         %{session: session} do
      register!(session, "boom", fn _ -> raise ArgumentError, "elixir says no" end)

      assert {:error, %Error.PythonException{python_type: "ElixirToolError"} = error} =
               Snakepit.execute_in_session(session, "call_elixir_demo", %{tool_name: "boom"})

      assert error.message =~ "ArgumentError: elixir says no"
      assert error.context.tool == "call_elixir_demo"
    end

    test "raising, throwing, exiting and {:error, _} tools become error results",
         %{session: session} do
      register!(session, "raises", fn _ -> raise ArgumentError, "bad argument here" end)
      register!(session, "throws", fn _ -> throw(:ball) end)
      register!(session, "exits", fn _ -> exit(:gone) end)
      register!(session, "refuses", fn _ -> {:error, "not today"} end)
      register!(session, "refuses_term", fn _ -> {:error, {:quota, 3}} end)
      register!(session, "crashes_linked", fn _ -> Process.exit(self(), :kill) end)
      bridge = Process.whereis(Snakepit.GRPC.BridgeServer)

      call = fn name ->
        {:ok, result} = Snakepit.execute_in_session(session, "try_elixir", %{name: name})
        result
      end

      assert %{"type" => "ArgumentError", "message" => "bad argument here", "kind" => "tool"} =
               raised = call.("raises")

      assert raised["traceback"] =~ "tool_bridge_test.exs"
      assert %{"type" => "throw", "message" => ":ball"} = call.("throws")
      assert %{"type" => "exit", "message" => ":gone"} = call.("exits")
      assert %{"type" => "ElixirError", "message" => "not today"} = call.("refuses")
      assert %{"type" => "ElixirError", "message" => "{:quota, 3}"} = call.("refuses_term")
      assert %{"type" => "exit", "message" => ":killed"} = call.("crashes_linked")
      assert Process.whereis(Snakepit.GRPC.BridgeServer) == bridge
    end

    test "an Elixir tool that outlives its budget is stopped with a timeout error",
         %{session: session} do
      parent = self()

      register!(session, "stuck", fn _ ->
        send(parent, {:stuck, self()})
        receive do: (:never -> :ok)
      end)

      assert {:ok, %{"type" => "TimeoutError", "kind" => "timeout", "message" => message}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "stuck", timeout_s: 0.5})

      assert message =~ "stuck"
      assert_receive {:stuck, pid}
      ref = Process.monitor(pid)
      assert_receive {:DOWN, ^ref, :process, ^pid, _}
    end

    test "binaries go both ways: Python bytes in, non-UTF-8 binary out as bytes",
         %{session: session} do
      parent = self()

      register!(session, "reverse_blob", fn %{"blob" => blob} ->
        send(parent, {:blob, blob})
        blob |> :binary.bin_to_list() |> Enum.reverse() |> :binary.list_to_bin()
      end)

      register!(session, "blob_info", fn %{"blob" => blob} -> %{size: byte_size(blob)} end)

      assert {:ok, %{"size" => 1000}} =
               Snakepit.execute_in_session(session, "send_bytes", %{name: "blob_info", size: 1000})

      assert {:ok, reversed} =
               Snakepit.execute_in_session(session, "send_bytes", %{
                 name: "reverse_blob",
                 size: 300
               })

      assert_receive {:blob, blob}
      assert byte_size(blob) == 300
      # Python got bytes back and returned them: an Elixir binary again.
      assert reversed == blob |> :binary.bin_to_list() |> Enum.reverse() |> :binary.list_to_bin()
    end

    test "an Elixir result that JSON cannot hold is a serialization error", %{session: session} do
      register!(session, "gives_pid", fn _ -> %{pid: self()} end)

      assert {:ok, %{"type" => "SerializationError", "kind" => "serialization", "message" => msg}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "gives_pid"})

      assert msg =~ "pid"
      assert msg =~ "gives_pid"
    end

    test "malformed or non-UTF-8 arguments from Python never reach the tool",
         %{session: session} do
      parent = self()
      register!(session, "spy", fn params -> send(parent, {:spy, params}) end)

      for {which, expected} <- [
            {"truncated", "not valid JSON"},
            {"non_utf8", "not valid JSON"},
            {"array", "must be a JSON object"}
          ] do
        assert {:ok, %{"success" => false, "type" => "SerializationError", "message" => msg}} =
                 Snakepit.execute_in_session(session, "raw_elixir_call", %{
                   name: "spy",
                   case: which
                 })

        assert msg =~ expected
      end

      refute_received {:spy, _}

      assert {:ok, %{"result" => ["spy", %{}]}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "spy"})

      assert_received {:spy, %{}}
    end

    test "Elixir tools run concurrently, each in its own process", %{session: session} do
      parent = self()

      register!(session, "rendezvous", fn _ ->
        send(parent, {:arrived, self()})
        receive do: (:go -> "went")
      end)

      calls =
        for _ <- 1..2 do
          Task.async(fn ->
            Snakepit.execute_in_session(session, "try_elixir", %{name: "rendezvous"})
          end)
        end

      # Both tool processes are running at the same time before either ends.
      assert_receive {:arrived, first}, 10_000
      assert_receive {:arrived, second}, 10_000
      assert first != second
      send(first, :go)
      send(second, :go)

      assert [{:ok, %{"result" => "went"}}, {:ok, %{"result" => "went"}}] =
               Task.await_many(calls, 10_000)
    end

    test "a restarted bridge keeps serving the running workers", %{session: session} do
      register!(session, "still_here", fn _ -> "yes" end)

      assert {:ok, %{"result" => "yes"}} =
               Snakepit.execute_in_session(session, "try_elixir", %{name: "still_here"})

      workers = AppPool.worker_os_pids()
      old = Process.whereis(Snakepit.GRPC.BridgeServer)
      ref = Process.monitor(old)
      Process.exit(old, :kill)
      assert_receive {:DOWN, ^ref, :process, ^old, :killed}

      assert AppPool.wait_until(
               fn -> Process.whereis(Snakepit.GRPC.BridgeServer) not in [nil, old] end,
               5_000
             ) != :timeout

      for _ <- 1..4 do
        assert {:ok, %{"result" => "yes"}} =
                 Snakepit.execute_in_session(session, "try_elixir", %{name: "still_here"})
      end

      assert AppPool.worker_os_pids() == workers
    end
  end

  describe "exception translation" do
    @mapped [
      {"ValueError", Error.ValueError},
      {"TypeError", Error.TypeError},
      {"KeyError", Error.KeyError},
      {"IndexError", Error.IndexError},
      {"AttributeError", Error.AttributeError},
      {"ImportError", Error.ImportError},
      {"ModuleNotFoundError", Error.ImportError},
      {"FileNotFoundError", Error.FileNotFoundError},
      {"PermissionError", Error.PermissionError},
      {"RuntimeError", Error.RuntimeError},
      {"NotImplementedError", Error.NotImplementedError},
      {"ZeroDivisionError", Error.ZeroDivisionError},
      {"OSError", Error.PythonException},
      {"TimeoutError", Error.PythonException},
      {"LookupError", Error.PythonException}
    ]

    test "each Python exception becomes its struct, with message, type and traceback" do
      for {type, module} <- @mapped do
        assert {:error, %^module{} = error} =
                 Snakepit.execute("error_demo", %{error_type: type, message: "oops #{type}"})

        assert error.python_type == type
        assert error.message =~ "oops #{type}"
        assert error.python_traceback =~ "Traceback (most recent call last)"
        # asyncio re-creates a TimeoutError coming out of a worker thread,
        # losing the tool's frames; every other type keeps them.
        if type != "TimeoutError", do: assert(error.python_traceback =~ "error_demo")
        assert error.context.tool == "error_demo"
        assert Exception.message(error) =~ "#{type}: "
      end
    end

    test "the documented pattern match works" do
      result =
        case Snakepit.execute("error_demo", %{error_type: "value"}) do
          {:error, %Error.ValueError{message: message}} -> {:value, message}
          {:error, %Error.PythonException{python_type: type}} -> {:other, type}
        end

      assert {:value, _} = result

      assert {:error, %Error.PythonException{python_type: "AssertionError"}} =
               Snakepit.execute("error_demo", %{error_type: "assertion"})
    end

    test "ML errors the parser knows get their own structs" do
      assert {:error, %Error.OutOfMemory{message: message}} =
               Snakepit.execute("error_demo", %{
                 error_type: "RuntimeError",
                 message: "CUDA out of memory. Tried to allocate 20.00 MiB"
               })

      assert message =~ "RuntimeError: CUDA out of memory"
    end

    test "wrong arguments are a TypeError naming the tool and the parameter" do
      assert {:error, %Error.TypeError{message: message}} = Snakepit.execute("add", %{a: 1})
      assert message =~ "add"
      assert message =~ "'b'"
    end
  end

  describe "results from Python" do
    test "unserializable objects arrive as markers" do
      assert {:ok, %{"value" => value, "ok" => 1}} = Snakepit.execute("opaque", %{})
      assert Snakepit.Serialization.unserializable?(value)

      assert {:ok, %{type: "builtins.object", repr: nil}} =
               Snakepit.Serialization.unserializable_info(value)

      assert {:ok, %{"token" => token}} =
               Snakepit.execute("opaque", %{detail: "repr_redacted_truncated"})

      assert {:ok, %{repr: repr}} = Snakepit.Serialization.unserializable_info(token)
      assert repr =~ "<REDACTED>"
      refute repr =~ "abcdefghijklmnop"

      assert {:ok, %{"value" => "<unserializable builtins.object>"}} =
               Snakepit.execute("opaque", %{detail: "type"})
    end

    test "a bytes result is an Elixir binary" do
      data = <<0, 1, 2, 255, 254>>

      assert {:ok, <<254, 255, 2, 1, 0>>} =
               Snakepit.execute("process_binary", %{operation: "reverse"},
                 binary_parameters: %{"data" => data}
               )

      assert {:ok, %{"size" => 5}} =
               Snakepit.execute("process_binary", %{operation: "length"},
                 binary_parameters: %{"data" => data}
               )
    end

    test "malformed JSON or non-UTF-8 text from Python is a structured error; the worker stays up" do
      workers = Snakepit.list_workers()

      for which <- ["truncated", "non_utf8"] do
        assert {:error, %Error{category: :worker, message: message}} =
                 Snakepit.execute("bad_json", %{case: which})

        assert message =~ "malformed JSON"
      end

      assert {:ok, %{"status" => "pong"}} = Snakepit.execute("ping", %{})
      assert Snakepit.list_workers() == workers
    end

    test "a stream chunk that is not JSON arrives as raw_data_base64, in order" do
      parent = self()
      assert :ok = Snakepit.execute_stream("bad_json_stream", %{}, &send(parent, {:chunk, &1}))

      assert [%{"n" => 1}, %{"raw_data_base64" => raw}, %{"n" => 2}, %{"is_final" => true}] =
               collect_chunks()

      assert Base.decode64!(raw) == "not json " <> <<255>>
    end
  end

  describe "streaming" do
    test "a streaming tool called with execute/3 is a validation error; the worker stays up" do
      assert {:error, %Error{category: :validation, message: message, details: details}} =
               Snakepit.execute("stream_data", %{count: 3})

      assert message =~ "execute_stream"
      assert details.kind == "streaming_tool"
      assert {:ok, %{"result" => 3}} = Snakepit.execute("add", %{a: 1, b: 2})
    end

    test "a plain tool called with execute_stream/4 gives its result as one final chunk" do
      parent = self()
      assert :ok = Snakepit.execute_stream("add", %{a: 1, b: 2}, &send(parent, {:chunk, &1}))
      assert [%{"result" => 3, "is_final" => true}] = collect_chunks()

      assert {:error, %Error.KeyError{}} =
               Snakepit.execute_stream("error_demo", %{error_type: "key"}, fn _ -> :ok end)
    end

    test "chunks arrive in order" do
      parent = self()

      assert :ok =
               Snakepit.execute_stream("stream_data", %{count: 200}, &send(parent, {:chunk, &1}))

      chunks = collect_chunks()

      assert Enum.map(Enum.reject(chunks, & &1["is_final"]), & &1["index"]) ==
               Enum.to_list(0..199)

      assert List.last(chunks)["is_final"]
    end

    test ":halt stops the Python producer", %{session: session} do
      parent = self()
      register!(session, "stream_stopped", fn params -> send(parent, {:stopped, params}) end)
      # Big items, so that the HTTP/2 window holds few of them (32).
      payload = 256 * 1024

      assert :ok =
               Snakepit.execute_in_session_stream(
                 session,
                 "endless",
                 %{report_to: "stream_stopped", payload_bytes: payload},
                 fn chunk ->
                   send(parent, {:chunk, chunk})
                   if chunk["index"] == 4, do: :halt, else: :ok
                 end
               )

      assert length(collect_chunks()) == 5
      # The endless generator was closed: its finally ran and reported. It
      # can only have run ahead as far as the buffers between us allow.
      assert_receive {:stopped, %{"produced" => produced}}, 10_000
      assert produced >= 5
      bound = max_produced(4, Snakepit.Defaults.stream_window(), payload)
      assert produced <= bound, "producer ran #{produced} items ahead, bound #{bound}"
      assert {:ok, _} = Snakepit.execute("ping", %{})
    end

    test "the caller's mailbox stays bounded by the window while the consumer is slow",
         %{session: session} do
      window = 4
      previous = Application.fetch_env(:snakepit, :stream_window)
      Application.put_env(:snakepit, :stream_window, window)

      on_exit(fn ->
        case previous do
          {:ok, v} -> Application.put_env(:snakepit, :stream_window, v)
          :error -> Application.delete_env(:snakepit, :stream_window)
        end
      end)

      parent = self()
      register!(session, "stream_stopped_2", fn params -> send(parent, {:stopped, params}) end)
      me = self()
      payload = 64 * 1024
      halt_at = 300

      assert :ok =
               Snakepit.execute_in_session_stream(
                 session,
                 "endless",
                 %{report_to: "stream_stopped_2", payload_bytes: payload},
                 fn chunk ->
                   note_queue(me)

                   # A slow consumer: every fifth chunk it holds on until the
                   # producer has filled what the window lets it send (a wait
                   # for the producer, however loaded the machine), and an
                   # unbounded producer runs far ahead meanwhile.
                   if rem(chunk["index"], 5) == 0 do
                     filled =
                       AppPool.wait_until(fn -> note_queue(me) >= div(window, 2) end, 10_000, 1)

                     if filled == :timeout, do: Process.put(:starved, chunk["index"])
                   end

                   if chunk["index"] == halt_at, do: :halt, else: :ok
                 end
               )

      assert_receive {:stopped, %{"produced" => produced}}, 10_000
      assert Process.get(:starved) == nil, "the producer did not fill the window"
      max_queue = Process.get(:max_queue)
      assert max_queue <= window + 1, "mailbox held #{max_queue} messages, window #{window}"
      # And the producer really was ahead: during the consumer's pauses its
      # messages waited in the mailbox. Credit goes back to the worker in
      # halves of the window, so at a pause up to half the window minus one
      # acknowledged chunks are not yet granted back, and the chunk in hand
      # is out of the mailbox: at least half the window waits there.
      assert max_queue >= div(window, 2)
      # The producer itself was held back by the same chain of buffers.
      bound = max_produced(halt_at, window, payload)
      assert produced <= bound, "producer ran #{produced} items ahead, bound #{bound}"
      assert produced > halt_at
    end
  end

  # The caller's mailbox length now, and the most it held so far.
  defp note_queue(pid) do
    {:message_queue_len, len} = Process.info(pid, :message_queue_len)
    Process.put(:max_queue, max(len, Process.get(:max_queue, 0)))
    len
  end

  defp collect_chunks(acc \\ []) do
    receive do
      {:chunk, chunk} -> collect_chunks([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
