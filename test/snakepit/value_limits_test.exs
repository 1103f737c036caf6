defmodule Snakepit.ValueLimitsTest do
  # Real workers (test/fixtures/python/limits_adapter.py): how deep values
  # may nest and how long integers may be, both ways, on every path
  # (execute, streams, the tool bridge), and what happens past the limits:
  # a structured error for that call, never a crash of the VM or the worker.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  @limit 1_000
  @digits 4_300

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{
          name: :default,
          pool_size: 1,
          adapter_args: ["--adapter", "limits_adapter.LimitsAdapter"]
        }
      ]
    )

    :ok
  end

  defp maps(depth), do: Enum.reduce(1..depth//1, 1, fn _, acc -> %{"d" => acc} end)
  defp lists(depth), do: Enum.reduce(1..depth//1, 1, fn _, acc -> [acc] end)

  defp worker_pid, do: AppPool.worker_os_pids()

  defp stream(tool, args) do
    parent = self()

    result =
      Snakepit.execute_stream(tool, args, fn chunk -> send(parent, {:chunk, chunk}) end,
        timeout: 30_000
      )

    {result, collect([])}
  end

  defp collect(acc) do
    receive do
      {:chunk, chunk} -> collect([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  describe "arguments" do
    test "nested past max_nesting_depth are refused in the caller, naming the limit and the path" do
      workers = worker_pid()

      for {what, nested} <- [
            maps_5k: maps(5_000),
            maps_100k: maps(100_000),
            lists_5k: lists(5_000),
            lists_20k: lists(20_000)
          ] do
        assert {:error, %Error{category: :validation, message: message}} =
                 Snakepit.execute("echo", %{x: nested}),
               "#{what}"

        assert message =~ "max_nesting_depth (#{@limit})"
        assert message =~ "a value at .x"
        assert message =~ "levels>"
      end

      # The pool keeps serving, with the same worker.
      assert {:ok, %{"ok" => 1}} = Snakepit.execute("echo", %{ok: 1})
      assert worker_pid() == workers
    end

    test "exactly at the limit are accepted and come back whole; one more level is not" do
      at_limit = %{"x" => maps(@limit - 1)}
      assert {:ok, ^at_limit} = Snakepit.execute("echo", at_limit, timeout: 30_000)

      lists_at_limit = %{"x" => lists(@limit - 1)}
      assert {:ok, ^lists_at_limit} = Snakepit.execute("echo", lists_at_limit, timeout: 30_000)

      assert {:error, %Error{category: :validation, message: message}} =
               Snakepit.execute("echo", %{"x" => maps(@limit)})

      assert message =~ "max_nesting_depth (#{@limit})"
    end

    test "a 300 MiB binary is refused before it is encoded, in microseconds" do
      data = :binary.copy(<<1>>, 300 * 1024 * 1024)

      {micros, result} = :timer.tc(fn -> Snakepit.execute("echo", %{data: data}) end)
      assert {:error, %Error{category: :validation, message: message}} = result
      assert message =~ "max_message_bytes (#{256 * 1024 * 1024})"
      assert message =~ "refused at .data"

      {params_micros, result} =
        :timer.tc(fn -> Snakepit.execute("echo", %{}, binary_parameters: %{"data" => data}) end)

      assert {:error, %Error{category: :validation, message: message}} = result
      assert message =~ "binary_parameters hold #{300 * 1024 * 1024} bytes"

      IO.puts(
        "\n300 MiB argument refused in #{micros} us (in args), " <>
          "#{params_micros} us (binary_parameters), whole Snakepit.execute/3 call"
      )

      # Measured, not asserted as a bound (tests assert behaviour): nothing
      # of the binary was encoded, so no copy of it was made.
      assert {:ok, %{"ok" => true}} = Snakepit.execute("echo", %{ok: true})
    end
  end

  describe "results" do
    test "nested 200 deep come back, in execute and in streams" do
      assert {:ok, value} = Snakepit.execute("nested", %{depth: 200})
      assert value == maps(200)

      assert {:ok, value} = Snakepit.execute("nested", %{depth: 200, kind: "list"})
      assert value == lists(200)

      assert {:ok, chunks} = stream("nested_stream", %{depth: 200, count: 3})
      assert [%{"i" => 0, "value" => v} | _] = chunks
      assert v == maps(199)
      assert length(Enum.filter(chunks, &Map.has_key?(&1, "value"))) == 3
      refute Enum.any?(chunks, &Map.has_key?(&1, "raw_data_base64"))
    end

    test "nested exactly to the limit come back; deeper ones are a structured error" do
      assert {:ok, value} = Snakepit.execute("nested", %{depth: @limit}, timeout: 30_000)
      assert value == maps(@limit)

      # The worker's serializer refuses it.
      assert {:error, error} = Snakepit.execute("nested", %{depth: @limit + 1})
      assert Exception.message(error) =~ "max_nesting_depth (#{@limit})"

      assert {:error, error} = Snakepit.execute("nested", %{depth: 5_000, kind: "list"})
      assert Exception.message(error) =~ "max_nesting_depth (#{@limit})"

      assert {:ok, %{"ok" => 1}} = Snakepit.execute("echo", %{ok: 1})
    end

    test "JSON past the limit from a broken worker is refused by the VM, not crashed on" do
      # Within the wrappers' slack (the JSON parses) but deeper than the
      # limit as a value, and far past it.
      for depth <- [@limit + 5, 5_000, 100_000] do
        assert {:error, %Error{category: :worker, details: details} = error} =
                 Snakepit.execute("raw_nested", %{depth: depth}, timeout: 30_000)

        assert details.native == :limit_exceeded
        assert error.message =~ "max_nesting_depth (#{@limit})"
      end

      assert {:ok, value} = Snakepit.execute("raw_nested", %{depth: @limit})
      assert value == lists(@limit)
    end

    test "a stream chunk past the limit ends the stream with an error, not base64" do
      assert {{:error, %Error{details: %{native: :limit_exceeded}} = error}, chunks} =
               stream("raw_nested_stream", %{depth: 5_000})

      assert error.message =~ "max_nesting_depth (#{@limit})"
      assert [%{"i" => 0}] = chunks
      assert {:ok, %{"ok" => 1}} = Snakepit.execute("echo", %{ok: 1})
    end
  end

  describe "integers" do
    test "up to max_integer_digits travel both ways" do
      n = Integer.pow(10, @digits) - 1
      assert {:ok, %{"n" => ^n}} = Snakepit.execute("echo", %{n: n})
      negative = -n
      assert {:ok, %{"n" => ^negative}} = Snakepit.execute("echo", %{n: negative})
      assert {:ok, %{"digits" => @digits}} = Snakepit.execute("digits", %{n: n})

      expected = Integer.pow(10, @digits - 1)
      assert {:ok, %{"n" => ^expected}} = Snakepit.execute("big_int", %{digits: @digits})
    end

    test "longer ones are refused both ways with the limit named" do
      long = Integer.pow(10, @digits)

      assert {:error, %Error{category: :validation, message: message}} =
               Snakepit.execute("echo", %{n: [1, long]})

      assert message =~ "max_integer_digits (#{@digits})"
      assert message =~ ".n[1]"

      # The VM's largest integers (1.3 million digits) are judged by size.
      huge = Integer.pow(2, 4_000_000)

      {micros, result} = :timer.tc(fn -> Snakepit.execute("echo", %{n: huge}) end)
      assert {:error, %Error{category: :validation, message: message}} = result
      assert message =~ "an integer of at least"
      assert micros < 5_000_000

      for digits <- [@digits + 1, 1_300_000] do
        assert {:error, error} = Snakepit.execute("big_int", %{digits: digits}, timeout: 60_000)
        assert Exception.message(error) =~ "max_integer_digits (#{@digits})"
      end
    end
  end

  describe "the tool bridge" do
    setup do
      session = "limits-#{System.unique_integer([:positive])}"

      on_exit(fn ->
        if Process.whereis(ToolRegistry), do: ToolRegistry.cleanup_session(session)
      end)

      {:ok, session: session}
    end

    test "an Elixir tool's reply 400 deep reaches Python; 5,000 deep is a structured error",
         %{session: session} do
      :ok =
        ToolRegistry.register_elixir_tool(session, "deep400", fn _ -> lists(400) end, %{
          exposed_to_python: true
        })

      :ok =
        ToolRegistry.register_elixir_tool(session, "deep5000", fn _ -> lists(5_000) end, %{
          exposed_to_python: true
        })

      assert {:ok, %{"depth" => 400}} =
               Snakepit.execute_in_session(session, "elixir_depth", %{name: "deep400"})

      assert {:ok, %{"error" => "SerializationError", "message" => message}} =
               Snakepit.execute_in_session(session, "elixir_depth", %{name: "deep5000"})

      assert message =~ "max_nesting_depth (#{@limit})"
      assert Process.whereis(Snakepit.GRPC.BridgeServer)

      assert {:ok, %{"depth" => 400}} =
               Snakepit.execute_in_session(session, "elixir_depth", %{name: "deep400"})
    end

    test "Python's arguments to an Elixir tool are held to the limit", %{session: session} do
      :ok =
        ToolRegistry.register_elixir_tool(session, "depth_of", &deepest/1, %{
          exposed_to_python: true
        })

      assert {:ok, %{"result" => @limit}} =
               Snakepit.execute_in_session(session, "elixir_send", %{
                 name: "depth_of",
                 depth: @limit
               })

      assert {:ok, %{"error" => "SerializationError", "message" => message}} =
               Snakepit.execute_in_session(session, "elixir_send", %{
                 name: "depth_of",
                 depth: @limit + 1
               })

      assert message =~ "max_nesting_depth (#{@limit})"
    end
  end

  # How deep a term nests (containers; the outermost counts).
  defp deepest(map) when is_map(map),
    do: 1 + (map |> Map.values() |> Enum.map(&deepest/1) |> Enum.max(fn -> 0 end))

  defp deepest(list) when is_list(list),
    do: 1 + (list |> Enum.map(&deepest/1) |> Enum.max(fn -> 0 end))

  defp deepest(_), do: 0
end

defmodule Snakepit.ValueLimitsConfigTest do
  # The limits are settings: what is configured reaches the native core and
  # every worker alike; values out of range stop the application starting.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  defp maps(depth), do: Enum.reduce(1..depth//1, 1, fn _, acc -> %{"d" => acc} end)

  defp start(extra) do
    AppPool.start!(
      [
        python_path: [AppPool.fixtures_dir()],
        pools: [
          %{
            name: :default,
            pool_size: 1,
            adapter_args: ["--adapter", "limits_adapter.LimitsAdapter"]
          }
        ]
      ] ++ extra
    )
  end

  test "configured limits apply in the VM and in the workers" do
    start(max_nesting_depth: 10, max_integer_digits: 50)

    assert {:ok, _} = Snakepit.execute("echo", %{"x" => maps(9)})

    assert {:error, %Error{category: :validation, message: message}} =
             Snakepit.execute("echo", %{"x" => maps(10)})

    assert message =~ "max_nesting_depth (10)"

    assert {:ok, _} = Snakepit.execute("nested", %{depth: 10})
    assert {:error, error} = Snakepit.execute("nested", %{depth: 11})
    assert Exception.message(error) =~ "max_nesting_depth (10)"

    fifty = Integer.pow(10, 49)
    assert {:ok, %{"n" => ^fifty}} = Snakepit.execute("echo", %{n: fifty})

    assert {:error, %Error{category: :validation, message: message}} =
             Snakepit.execute("echo", %{n: fifty * 10})

    assert message =~ "max_integer_digits (50)"
    assert {:error, error} = Snakepit.execute("big_int", %{digits: 51})
    assert Exception.message(error) =~ "max_integer_digits (50)"
  end

  test "limits out of range stop the application from starting, naming the key" do
    start([])
    Application.stop(:snakepit)

    for {key, value} <- [max_nesting_depth: 5_000, max_integer_digits: 5] do
      Application.put_env(:snakepit, key, value)
      assert {:error, reason} = Application.ensure_all_started(:snakepit)

      assert inspect(reason) =~
               "#{key}: must be #{if key == :max_nesting_depth, do: "1..2000", else: "20..100_000"}"

      Application.delete_env(:snakepit, key)
    end
  end
end
