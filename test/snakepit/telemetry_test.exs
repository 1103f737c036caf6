defmodule Snakepit.TelemetryTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Telemetry
  alias Snakepit.Test.AppPool

  defp forward(id, events) do
    parent = self()

    :ok =
      Telemetry.attach_many(
        id,
        events,
        fn event, m, meta, _ -> send(parent, {:event, event, m, meta}) end,
        nil
      )

    on_exit(fn -> Telemetry.detach(id) end)
  end

  test "worker spawn and calls are reported through the built-in handler table" do
    :ok = AppPool.restart(pool_size: 1)

    forward("t-spawn", [
      [:snakepit, :pool, :worker, :spawned],
      [:snakepit, :grpc_worker, :execute, :start],
      [:snakepit, :grpc_worker, :execute, :stop],
      [:snakepit, :grpc_worker, :stream, :stop],
      [:snakepit, :request, :executed]
    ])

    assert_receive {:event, [:snakepit, :pool, :worker, :spawned], %{duration: d},
                    %{worker_id: "default_worker_1", os_pid: pid}},
                   30_000

    assert is_integer(d) and is_integer(pid)
    assert {:ok, _} = Snakepit.execute("ping", %{})

    assert_receive {:event, [:snakepit, :grpc_worker, :execute, :start], %{system_time: _},
                    %{command: "ping", worker_id: "default_worker_1"}}

    assert_receive {:event, [:snakepit, :grpc_worker, :execute, :stop], %{duration: _},
                    %{command: "ping", success: true}}

    assert_receive {:event, [:snakepit, :request, :executed], %{duration_us: us},
                    %{
                      pool: :default,
                      worker_id: "default_worker_1",
                      command: "ping",
                      success: true
                    }}

    assert is_integer(us) and us > 0

    assert :ok = Snakepit.execute_stream("stream_data", %{"count" => 2}, fn _ -> :ok end)

    assert_receive {:event, [:snakepit, :grpc_worker, :stream, :stop], %{duration: d},
                    %{command: "stream_data", success: true, ended: :ended}}

    assert is_integer(d) and d > 0
  end

  test "attach refuses a duplicate id; detach reports unknown ids; a raising handler is detached" do
    forward("t-dup", [[:snakepit, :test, :event]])

    assert {:error, :already_exists} =
             Telemetry.attach("t-dup", [:snakepit, :test, :event], fn _, _, _, _ -> :ok end, nil)

    assert {:error, :not_found} = Telemetry.detach("never-attached")

    :ok =
      Telemetry.attach(
        "t-raise",
        [:snakepit, :test, :event],
        fn _, _, _, _ -> raise "handler bug" end,
        nil
      )

    ExUnit.CaptureLog.capture_log(fn ->
      Telemetry.emit([:snakepit, :test, :event], %{n: 1}, %{})
    end)

    assert {:error, :not_found} = Telemetry.detach("t-raise")
    # The other handler still got the event.
    assert_received {:event, [:snakepit, :test, :event], %{n: 1}, %{}}
  end

  test "the event catalogue lists what Snakepit emits" do
    assert [:snakepit, :pool, :worker, :spawned] in Telemetry.events()
    assert [:snakepit, :request, :executed] in Telemetry.pool_events()
  end

  describe "correlation ids" do
    setup do
      :ok =
        AppPool.restart(
          pool_size: 1,
          python_path: [AppPool.fixtures_dir()],
          adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
        )

      :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 30_000)

      forward("t-corr-#{System.unique_integer([:positive])}", [
        [:snakepit, :grpc_worker, :execute, :start],
        [:snakepit, :grpc_worker, :execute, :stop],
        [:snakepit, :request, :executed]
      ])
    end

    test "a given id is in the call's events and reaches the worker, with traceparent" do
      trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

      assert {:ok, seen} =
               Snakepit.execute("call_context", %{},
                 correlation_id: "order-42",
                 traceparent: trace,
                 metadata: %{"user" => "u1"}
               )

      assert seen == %{"correlation_id" => "order-42", "traceparent" => trace, "user" => "u1"}

      for event <- [
            [:snakepit, :grpc_worker, :execute, :start],
            [:snakepit, :grpc_worker, :execute, :stop],
            [:snakepit, :request, :executed]
          ] do
        assert_receive {:event, ^event, _, %{correlation_id: "order-42"}}
      end
    end

    test "without one, each call gets its own, the same on both sides" do
      assert {:ok, %{"correlation_id" => first}} = Snakepit.execute("call_context", %{})
      assert {:ok, %{"correlation_id" => second}} = Snakepit.execute("call_context", %{})
      assert first =~ ~r/^[0-9a-f]{32}$/ and first != second
      assert_receive {:event, [:snakepit, :request, :executed], _, %{correlation_id: ^first}}
      assert_receive {:event, [:snakepit, :request, :executed], _, %{correlation_id: ^second}}
    end

    test "a correlation id that is not a string is refused" do
      assert {:error, %Snakepit.Error{category: :validation, message: msg}} =
               Snakepit.execute("ping", %{}, correlation_id: 42)

      assert msg =~ "correlation_id"
    end
  end
end
