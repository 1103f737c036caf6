defmodule Snakepit.GRPCWorkerAPITest do
  # Upstream's per-worker API (GRPCWorker.execute & co., the adapter's
  # grpc_* helpers, GRPC.Client's channel-level execute) on real workers.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Adapters.GRPCPython
  alias Snakepit.{Error, GRPCWorker}
  alias Snakepit.GRPC.Client
  alias Snakepit.Test.AppPool

  setup_all do
    previous = Application.fetch_env(:snakepit, :pool_status_interval_ms)
    Application.put_env(:snakepit, :pool_status_interval_ms, 100)

    on_exit(fn ->
      case previous do
        {:ok, value} -> Application.put_env(:snakepit, :pool_status_interval_ms, value)
        :error -> Application.delete_env(:snakepit, :pool_status_interval_ms)
      end
    end)

    AppPool.start!(
      pool_size: 1,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
    )

    [id] = Snakepit.Pool.Registry.list_workers()
    {:ok, pid} = Snakepit.Pool.Registry.get_worker_pid(id)
    %{worker_id: id, worker: pid}
  end

  defp listen(events) do
    me = self()
    id = make_ref()

    :ok =
      Snakepit.Telemetry.attach_many(
        id,
        events,
        fn event, measurements, metadata, _ ->
          send(me, {:event, event, measurements, metadata})
        end,
        nil
      )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
  end

  describe "GRPCWorker.execute/3-5" do
    test "by pid or by worker id, with a timeout, options or both", %{worker: w, worker_id: id} do
      assert {:ok, %{"status" => "pong"}} = GRPCWorker.execute(w, "ping", %{})
      assert {:ok, %{"result" => 5}} = GRPCWorker.execute(id, "add", %{a: 2, b: 3})
      assert {:ok, %{"result" => 3}} = GRPCWorker.execute(w, "add", %{a: 1, b: 2}, 5_000)
      assert {:ok, _} = GRPCWorker.execute(w, "ping", %{}, timeout: 5_000)
      assert {:ok, _} = GRPCWorker.execute(w, "ping", %{}, :infinity)
      assert {:ok, _} = GRPCWorker.execute(w, "ping", %{}, nil, correlation_id: "c-1")
    end

    test "a tool that raises comes back as its exception struct", %{worker: w} do
      assert {:error, %Snakepit.Error.ValueError{}} =
               GRPCWorker.execute(w, "error_demo", %{error_type: "value"})
    end

    test "a call past its timeout is stopped in the worker, which keeps serving", %{worker: w} do
      assert {:error, %Error{category: :timeout}} =
               GRPCWorker.execute(w, "sleep", %{ms: 5_000}, 300)

      assert {:ok, %{"status" => "pong"}} = GRPCWorker.execute(w, "ping", %{})
    end

    test "bad input is a structured error in the caller, never a raise", %{worker: w} do
      for {args, category} <- [
            {[w, "", %{}], :validation},
            {[w, :ping, %{}], :validation},
            {[w, "ping", [1]], :validation},
            {[w, "ping", %{}, -1], :validation},
            {[w, "ping", %{}, [1, 2]], :validation},
            {[w, "ping", %{}, "soon"], :validation},
            {[:not_a_worker, "ping", %{}], :validation},
            {["no_such_worker", "ping", %{}], :worker}
          ] do
        assert {:error, %Error{category: ^category}} = apply(GRPCWorker, :execute, args),
               inspect(args)
      end

      dead = spawn(fn -> :ok end)
      ref = Process.monitor(dead)
      assert_receive {:DOWN, ^ref, _, _, _}
      assert {:error, %Error{category: :worker}} = GRPCWorker.execute(dead, "ping", %{})
      assert {:error, %Error{category: :worker}} = GRPCWorker.get_health(dead)
      assert {:error, %Error{category: :worker}} = GRPCWorker.get_channel(dead)
    end

    test "an unknown tool is a :validation error", %{worker: w} do
      assert {:error, %Error{category: :validation}} = GRPCWorker.execute(w, "no_such_tool", %{})
    end

    test "emits the older guide's gRPC call events", %{worker: w} do
      listen([[:snakepit, :grpc, :call, :start], [:snakepit, :grpc, :call, :stop]])
      assert {:ok, _} = GRPCWorker.execute(w, "ping", %{})
      assert_receive {:event, [:snakepit, :grpc, :call, :start], _, %{command: "ping"}}

      assert_receive {:event, [:snakepit, :grpc, :call, :stop], %{duration: _},
                      %{command: "ping"}}

      listen([[:snakepit, :grpc, :call, :exception]])
      assert {:error, _} = GRPCWorker.execute(w, "error_demo", %{error_type: "value"})
      assert_receive {:event, [:snakepit, :grpc, :call, :exception], _, %{kind: :error}}
    end
  end

  describe "GRPCWorker.execute_in_session/4-6 and get_session_id/1" do
    test "the worker's Python side sees the session", %{worker: w, worker_id: id} do
      assert {:ok, %{"session_id" => "s-1"}} =
               GRPCWorker.execute_in_session(w, "s-1", "session_info", %{})

      assert {:ok, %{"session_id" => "s-2"}} =
               GRPCWorker.execute_in_session(id, "s-2", "session_info", %{}, 5_000)

      assert {:ok, %{"session_id" => "s-3"}} =
               GRPCWorker.execute_in_session(w, "s-3", "session_info", %{}, nil, [])

      # Outside a session the worker sees none.
      assert {:ok, %{"session_id" => ""}} = GRPCWorker.execute(w, "session_info", %{})

      assert {:ok, own} = GRPCWorker.get_session_id(w)
      assert own == id <> "_session"

      assert {:ok, %{"session_id" => ^own}} =
               GRPCWorker.execute_in_session(w, own, "session_info", %{})

      assert {:error, %Error{category: :validation}} =
               GRPCWorker.execute_in_session(w, "", "session_info", %{})
    end
  end

  describe "GRPCWorker.execute_stream/4-6" do
    test "chunks reach the callback in the caller, in order", %{worker: w} do
      me = self()

      assert :ok =
               GRPCWorker.execute_stream(w, "stream_data", %{count: 3}, &send(me, {:chunk, &1}))

      for _ <- 1..3, do: assert_receive({:chunk, %{"is_final" => false}})
      assert_receive {:chunk, %{"is_final" => true}}

      assert :ok =
               GRPCWorker.execute_stream(w, "stream_data", %{count: 2}, fn _ -> :ok end, 10_000)

      assert :ok =
               GRPCWorker.execute_stream(w, "stream_data", %{count: 2}, fn _ -> :ok end, nil, [])
    end

    test ":halt stops it; bad callbacks are refused", %{worker: w} do
      me = self()

      assert :ok =
               GRPCWorker.execute_stream(w, "stream_data", %{count: 1_000}, fn chunk ->
                 send(me, {:chunk, chunk})
                 :halt
               end)

      assert_receive {:chunk, _}
      refute_receive {:chunk, _}, 100

      assert {:error, %Error{category: :validation}} =
               GRPCWorker.execute_stream(w, "stream_data", %{}, :not_a_fun)
    end

    test "emits the older guide's stream events", %{worker: w} do
      listen([
        [:snakepit, :grpc, :stream, :opened],
        [:snakepit, :grpc, :stream, :message],
        [:snakepit, :grpc, :stream, :closed]
      ])

      assert :ok = GRPCWorker.execute_stream(w, "stream_data", %{count: 2}, fn _ -> :ok end)
      assert_receive {:event, [:snakepit, :grpc, :stream, :opened], _, %{command: "stream_data"}}
      assert_receive {:event, [:snakepit, :grpc, :stream, :message], %{count: 1}, _}

      assert_receive {:event, [:snakepit, :grpc, :stream, :closed], %{message_count: n},
                      %{reason: :completed}}

      assert n >= 2
    end
  end

  describe "connections: get_channel/1, GRPC.Client, the adapter's grpc_* helpers" do
    test "a worker's connection works with GRPC.Client.execute/3-4", %{worker: w} do
      assert {:ok, conn} = GRPCWorker.get_channel(w)
      assert {:ok, %{"status" => "pong"}} = Client.execute(conn, "ping", %{})
      assert {:ok, %{"result" => 3}} = Client.execute(conn, "add", %{a: 1, b: 2}, 5_000)
      assert {:ok, %{"result" => 3}} = Client.execute(conn, "add", %{a: 1, b: 2}, nil)
      assert {:ok, "hello"} = Client.ping(conn, "hello")
      assert {:ok, _} = Client.ping(conn, "hello", timeout: 2_000)

      assert {:error, %Error{category: :validation}} = Client.execute(%{}, "ping", %{}, 1_000)
      assert {:error, %Error{category: :validation}} = Client.execute(conn, "ping", :x, 1_000)
      assert {:error, %Error{category: :validation}} = Client.execute(conn, "ping", %{}, "x")
      assert {:error, %Error{category: :validation}} = Client.ping(conn, :hello)
    end

    test "grpc_execute/4-6 and grpc_execute_stream/5-7", %{worker: w} do
      {:ok, conn} = GRPCWorker.get_channel(w)

      assert {:ok, %{"status" => "pong"}} = GRPCPython.grpc_execute(conn, nil, "ping", %{})

      assert {:ok, %{"session_id" => "s-9"}} =
               GRPCPython.grpc_execute(conn, "s-9", "session_info", %{}, 5_000)

      assert {:ok, _} = GRPCPython.grpc_execute(conn, nil, "ping", %{}, nil, correlation_id: "c")

      me = self()

      assert :ok =
               GRPCPython.grpc_execute_stream(conn, nil, "stream_data", %{count: 2}, fn chunk ->
                 send(me, {:chunk, chunk})
               end)

      assert_receive {:chunk, %{"is_final" => true}}

      assert :ok =
               GRPCPython.grpc_execute_stream(
                 conn,
                 "s-9",
                 "stream_data",
                 %{count: 1},
                 fn _ -> :ok end,
                 5_000,
                 []
               )

      assert {:error, %Error{category: :validation}} =
               GRPCPython.grpc_execute(conn, :bad_session, "ping", %{})

      assert {:error, %Error{category: :validation}} =
               GRPCPython.grpc_execute(:not_a_connection, nil, "ping", %{})

      assert {:error, %Error{category: :validation}} =
               GRPCPython.grpc_execute_stream(conn, nil, "stream_data", %{}, nil)
    end

    test "init_grpc_connection/1 reaches a worker by its address", %{worker_id: id} do
      {:ok, %{address: address}} = Snakepit.Pool.Registry.get_worker_metadata(id)
      assert {:ok, conn} = GRPCPython.init_grpc_connection(address)
      assert {:ok, %{"status" => "pong"}} = GRPCPython.grpc_execute(conn, nil, "ping", %{})
      assert {:ok, _} = Client.connect(address)

      assert {:error, %Error{category: :validation}} = GRPCPython.init_grpc_connection(:nope)
      assert {:error, %Error{category: :validation}} = GRPCPython.init_grpc_connection(70_000)

      missing =
        "unix:" <>
          Path.join(
            System.tmp_dir!(),
            "snakepit-no-such-#{System.unique_integer([:positive])}.sock"
          )

      assert {:error, %Error{}} = Client.connect(missing, 2, 10)
    end

    test "the adapter's gRPC facts" do
      assert GRPCPython.grpc_available?()
      assert GRPCPython.uses_grpc?()
      assert GRPCPython.get_port() == 0
      assert GRPCPython.command_timeout("batch_inference", %{}) == 300_000
      assert GRPCPython.command_timeout("process_large_dataset", %{}) == 600_000
    end
  end

  test "the pool's worker slot is in the starter registry", %{worker_id: id} do
    alias Snakepit.Pool.Worker.StarterRegistry
    assert StarterRegistry.starter_exists?(id)
    assert {:ok, starter} = StarterRegistry.get_starter_pid(id)
    assert id in StarterRegistry.list_starters()

    assert Snakepit.Pool.Worker.Starter.worker_pid(starter) ==
             elem(Snakepit.Pool.Registry.get_worker_pid(id), 1)
  end

  describe "GRPCWorker.get_health/1" do
    test "a ready worker answers its ping and reports its statistics", %{worker: w, worker_id: id} do
      assert {:ok, health} = GRPCWorker.get_health(w)

      assert %{
               healthy: true,
               status: :ready,
               worker_id: ^id,
               pool_name: :default,
               tainted: false,
               requests: requests,
               uptime_ms: uptime,
               ping_ms: ping
             } = health

      assert is_integer(requests) and is_integer(uptime) and uptime >= 0 and is_integer(ping)
      assert {:ok, %{worker_id: ^id}} = GRPCWorker.get_health(id)
    end
  end

  describe "GRPCWorker.start_link/1, outside any pool" do
    test "starts a worker, answers once it is ready, and stops it" do
      listen([[:snakepit, :grpc, :connection, :established]])

      assert {:ok, pid} =
               GRPCWorker.start_link(
                 adapter: GRPCPython,
                 id: "standalone_compat",
                 adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
               )

      assert_receive {:event, [:snakepit, :grpc, :connection, :established], %{duration: _},
                      %{worker_id: "standalone_compat"}}

      assert {:ok, %{"status" => "pong"}} = GRPCWorker.execute(pid, "ping", %{})

      assert {:ok, %{"session_id" => "x"}} =
               GRPCWorker.execute_in_session(pid, "x", "session_info", %{})

      %{os_pid: os_pid} = GRPCWorker.get_info(pid)
      listen([[:snakepit, :grpc, :connection, :lost]])
      Process.unlink(pid)
      ref = Process.monitor(pid)
      Snakepit.ProcessKiller.kill_process(os_pid, :sigkill)
      assert_receive {:DOWN, ^ref, :process, ^pid, {:shutdown, {:python_exited, _}}}, 10_000

      assert_receive {:event, [:snakepit, :grpc, :connection, :lost], _,
                      %{worker_id: "standalone_compat", reason: {:python_exited, _}}}
    end

    test "a worker that cannot start is an error, and the caller lives on" do
      assert {:error, %Error{category: :worker, message: message}} =
               GRPCWorker.start_link(adapter_args: ["--adapter", "no_such_module.Nope"])

      assert message =~ "no_such_module"

      assert {:error, %Error{category: :validation}} = GRPCWorker.start_link(pool_size: 0)
      assert {:error, %Error{category: :validation}} = GRPCWorker.start_link(:nope)
    end
  end

  describe "[:snakepit, :pool, :status]" do
    test "each pool reports its workers and queue every pool_status_interval_ms" do
      listen([[:snakepit, :pool, :status]])

      assert_receive {:event, [:snakepit, :pool, :status],
                      %{total_workers: 1, available_workers: a, busy_workers: b, queue_depth: 0},
                      %{pool_name: :default, node: node}},
                     2_000

      assert a + b == 1 and node == node()
    end
  end
end
