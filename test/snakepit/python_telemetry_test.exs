defmodule Snakepit.PythonTelemetryTest do
  # Telemetry emitted in real Python workers, folded into Elixir events by
  # the real native core (StreamTelemetry) and Snakepit.Telemetry.GrpcStream.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Telemetry
  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Test.AppPool

  setup_all do
    AppPool.start!(
      pool_size: 2,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
      telemetry_memory_interval_ms: 200
    )
  end

  defp forward(id, events) do
    parent = self()
    handler = fn event, m, meta, _ -> send(parent, {:event, event, m, meta}) end
    :ok = Telemetry.attach_many(id, events, handler, nil)
    on_exit(fn -> Telemetry.detach(id) end)
  end

  # Every worker confirms a control message, and its events before that
  # confirmation were handled first: a barrier for "everything sent so far".
  defp drained!, do: :ok = GrpcStream.toggle(:all, true)

  defp cid, do: "cid-" <> Integer.to_string(System.unique_integer([:positive]))

  test "every call emits call and tool.execution events, timed in Python, with its correlation id" do
    forward("py-call", Telemetry.python_events())
    id = cid()
    assert {:ok, %{"result" => 3}} = Snakepit.execute("add", %{a: 1, b: 2}, correlation_id: id)

    assert_receive {:event, [:snakepit, :python, :call, :start], %{system_time: t},
                    %{correlation_id: ^id} = start}

    assert is_integer(t) and start.tool == "add"
    assert start.worker_id =~ "default_worker_" and start.pool_name == :default
    assert start.node == node()

    assert_receive {:event, [:snakepit, :python, :tool, :execution, :stop], %{duration: tool_d},
                    %{correlation_id: ^id, tool: "add"}}

    assert_receive {:event, [:snakepit, :python, :call, :stop], %{duration: call_d},
                    %{correlation_id: ^id}}

    # Native time units, integers; the call spans the tool's run.
    assert is_integer(call_d) and is_integer(tool_d) and call_d >= tool_d and tool_d > 0
  end

  test "a failing tool emits the exception events with the error type" do
    forward("py-exc", Telemetry.python_events())
    id = cid()

    assert {:error, _} =
             Snakepit.execute("error_demo", %{error_type: "key"}, correlation_id: id)

    # The Python exception's own type name, on both events.
    assert_receive {:event, [:snakepit, :python, :tool, :execution, :exception], %{duration: _},
                    %{correlation_id: ^id, error_type: "KeyError"}}

    assert_receive {:event, [:snakepit, :python, :call, :exception], %{duration: d},
                    %{correlation_id: ^id, error_type: "KeyError"}}

    assert is_integer(d)
  end

  test "a streaming call emits call events once its producer is done" do
    forward("py-stream", Telemetry.python_events())
    id = cid()

    :ok =
      Snakepit.execute_stream("stream_progress", %{steps: 3}, fn _chunk -> :ok end,
        correlation_id: id
      )

    assert_receive {:event, [:snakepit, :python, :call, :start], _,
                    %{"stream" => true, correlation_id: ^id}}

    assert_receive {:event, [:snakepit, :python, :call, :stop], %{duration: d},
                    %{correlation_id: ^id, tool: "stream_progress"}}

    assert is_integer(d)
  end

  test "a user's emit and span arrive as :event and :span events with their names" do
    forward("py-user", Telemetry.python_events())
    id = cid()
    assert {:ok, %{"ok" => true}} = Snakepit.execute("user_telemetry", %{}, correlation_id: id)

    assert_receive {:event, [:snakepit, :python, :event], m,
                    %{name: "model.inference", correlation_id: ^id} = meta}

    # Known keys become atoms, others stay strings.
    assert m == %{:latency_ms => 45, "tokens" => 12}
    assert meta.model == "small"

    assert_receive {:event, [:snakepit, :python, :span, :start], %{system_time: _},
                    %{name: "data_processing", stage: "preprocessing", correlation_id: ^id}}

    assert_receive {:event, [:snakepit, :python, :span, :stop], %{duration: d},
                    %{name: "data_processing", correlation_id: ^id} = stop}

    assert is_integer(d) and d > 0 and stop["rows"] == 3

    assert_receive {:event, [:snakepit, :python, :span, :exception], %{duration: _},
                    %{name: "flaky_step", error_type: "ValueError", correlation_id: ^id}}
  end

  test "workers sample their memory at the configured interval" do
    forward("py-mem", [[:snakepit, :python, :memory, :sampled]])

    assert_receive {:event, [:snakepit, :python, :memory, :sampled], m, meta}, 5_000
    assert m.rss_bytes > 1_000_000 and m.allocated_blocks > 0
    assert is_integer(meta.python_pid) and meta.worker_id =~ "default_worker_"
  end

  describe "runtime control" do
    setup do
      forward("py-control", [
        [:snakepit, :python, :call, :start],
        [:snakepit, :python, :tool, :execution, :start]
      ])

      on_exit(fn -> GrpcStream.toggle(:all, true) end)
      on_exit(fn -> GrpcStream.update_sampling(:all, 1.0) end)
      on_exit(fn -> GrpcStream.update_filter(:all, []) end)
      :ok
    end

    test "telemetry switched off and on for all workers, without a restart" do
      os_pids = AppPool.worker_os_pids()
      assert :ok = GrpcStream.toggle(:all, false)
      quiet = cid()
      {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: quiet)
      assert :ok = GrpcStream.toggle(:all, true)
      refute_received {:event, _, _, %{correlation_id: ^quiet}}

      loud = cid()
      {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: loud)
      assert_receive {:event, [:snakepit, :python, :call, :start], _, %{correlation_id: ^loud}}
      assert AppPool.worker_os_pids() == os_pids
    end

    test "one worker switched off; the other keeps reporting" do
      [%{worker_id: off}, %{worker_id: on}] = GrpcStream.list_streams()
      assert :ok = GrpcStream.toggle(off, false)

      ids = for _ <- 1..6, do: cid()
      for id <- ids, do: {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: id)
      drained!()

      seen =
        for id <- ids, reduce: [] do
          acc ->
            receive do
              {:event, [:snakepit, :python, :call, :start], _,
               %{correlation_id: ^id, worker_id: w}} ->
                [w | acc]
            after
              0 -> acc
            end
        end

      assert seen != [] and Enum.all?(seen, &(&1 == on))
    end

    test "a sampling rate of 0 keeps nothing; a filter keeps only what it allows" do
      assert :ok = GrpcStream.update_sampling(:all, 0.0, ["python.call.*"])
      id = cid()
      {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: id)
      drained!()
      refute_received {:event, [:snakepit, :python, :call, :start], _, %{correlation_id: ^id}}

      assert_received {:event, [:snakepit, :python, :tool, :execution, :start], _,
                       %{correlation_id: ^id}}

      assert :ok = GrpcStream.update_sampling(:all, 1.0)
      assert :ok = GrpcStream.update_filter(:all, allow: ["python.call.*"])
      id = cid()
      {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: id)
      drained!()
      assert_received {:event, [:snakepit, :python, :call, :start], _, %{correlation_id: ^id}}

      refute_received {:event, [:snakepit, :python, :tool, :execution, :start], _,
                       %{correlation_id: ^id}}
    end

    test "bad control input is a validation error" do
      assert {:error, %Snakepit.Error{category: :validation}} =
               GrpcStream.update_sampling(:all, 2.0)

      assert {:error, %Snakepit.Error{category: :validation}} =
               GrpcStream.update_filter(:all, allow: "x")

      assert {:error, %Snakepit.Error{category: :validation, message: msg}} =
               GrpcStream.toggle("no_such_worker", true)

      assert msg =~ "no_such_worker"
      assert {:error, %Snakepit.Error{category: :validation}} = GrpcStream.toggle(42, true)
    end
  end

  test "with no handler attached workers send nothing; attaching turns it back on at once" do
    # No Python handler in this test until the end.
    refute Telemetry.has_handlers?([:snakepit, :python])
    :ok = GrpcStream.refresh()
    assert %{forwarding: false} = GrpcStream.stats()
    before = GrpcStream.stats().received
    for _ <- 1..5, do: {:ok, _} = Snakepit.execute("ping", %{})

    forward("py-late", [[:snakepit, :python, :call, :start]])
    assert %{forwarding: true, received: ^before} = GrpcStream.stats()
    id = cid()
    {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: id)
    assert_receive {:event, [:snakepit, :python, :call, :start], _, %{correlation_id: ^id}}
  end

  test "a burst of 100k events is bounded in the BEAM, counted as dropped, and the pool keeps serving" do
    counter = :counters.new(1, [])
    handler = fn _e, _m, _md, c -> :counters.add(c, 1, 1) end
    :ok = Telemetry.attach("py-burst", [:snakepit, :python, :event], handler, counter)
    on_exit(fn -> Telemetry.detach("py-burst") end)

    memory_before = :erlang.memory(:total)
    stats_before = GrpcStream.stats()

    burst =
      Task.async(fn -> Snakepit.execute("emit_burst", %{count: 100_000}, timeout: 60_000) end)

    # The other worker answers while the burst runs.
    assert {:ok, %{"status" => "pong"}} = Snakepit.execute("ping", %{})
    assert {:ok, %{"emitted" => 100_000}} = Task.await(burst, 70_000)
    drained!()

    stats = GrpcStream.stats()
    emitted = :counters.get(counter, 1)
    dropped = stats.dropped - stats_before.dropped
    assert dropped > 0
    assert emitted > 0 and emitted + dropped >= 100_000
    {:message_queue_len, queue} = Process.info(Process.whereis(GrpcStream), :message_queue_len)
    assert queue < 10
    assert :erlang.memory(:total) - memory_before < 64 * 1024 * 1024
    assert {:ok, _} = Snakepit.execute("ping", %{})
  end

  test "hostile names, keys and values create no atoms and crash nothing" do
    forward("py-hostile", Telemetry.python_events())
    # Once, so that the code on the way has loaded its modules (and atoms).
    {:ok, _} = Snakepit.execute("hostile_telemetry", %{n: 1})
    drained!()
    atoms = :erlang.system_info(:atom_count)
    rejected = GrpcStream.stats().rejected

    {:ok, _} = Snakepit.execute("hostile_telemetry", %{n: 50})
    drained!()

    assert :erlang.system_info(:atom_count) == atoms
    # The non-numeric measurements were rejected and counted.
    assert GrpcStream.stats().rejected - rejected >= 50
    # Unknown names arrive as :event with the name a string; keys stay strings.
    assert_received {:event, [:snakepit, :python, :event], m, %{name: "evil_" <> _} = meta}
    assert Enum.all?(Map.keys(m), &is_binary/1)
    assert Enum.any?(Map.keys(meta), &(is_binary(&1) and String.starts_with?(&1, "k_")))
    assert_received {:event, [:snakepit, :python, :span, :stop], _, %{name: "span_" <> _} = span}

    long =
      Enum.find_value(span, fn {k, v} ->
        if is_binary(k) and String.starts_with?(k, "meta_"), do: v
      end)

    assert byte_size(long) == 1024
    assert {:ok, _} = Snakepit.execute("ping", %{})
  end

  test "Python's list of worker events is the one Naming knows" do
    {:ok, python} = Snakepit.PythonRuntime.executable()

    code =
      "from snakepit_bridge.telemetry.stream import WORKER_EVENTS as W; print('\\n'.join('.'.join(p) for p in W))"

    {out, 0} = System.cmd(python, ["-c", code], env: Snakepit.PythonRuntime.worker_env())

    known =
      for %{python: name} <- Snakepit.Telemetry.Naming.python_event_catalog(),
          not String.starts_with?(name, ["event", "span."]),
          do: name

    assert Enum.sort(String.split(out, "\n", trim: true)) == Enum.sort(known)
  end

  test "a restarted GrpcStream takes over the workers' streams" do
    old = Process.whereis(GrpcStream)
    before = Enum.map(GrpcStream.list_streams(), & &1.worker_id)
    assert length(before) == 2
    ref = Process.monitor(old)
    Process.exit(old, :kill)
    assert_receive {:DOWN, ^ref, :process, ^old, :killed}

    # Nobody listens meanwhile, so no event would make workers reconnect:
    # the new GrpcStream must find their streams itself.
    assert Enum.sort(Enum.map(streams_after_restart(old), & &1.worker_id)) == Enum.sort(before)
    forward("py-takeover", [[:snakepit, :python, :call, :stop]])
    id = cid()
    {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: id)
    assert_receive {:event, [:snakepit, :python, :call, :stop], _, %{correlation_id: ^id}}
  end

  # The supervisor restarts it after the DOWN reached us: until then the
  # name is unregistered or still the old pid.
  defp streams_after_restart(old) do
    case Process.whereis(GrpcStream) do
      pid when is_pid(pid) and pid != old -> GrpcStream.list_streams()
      _ -> receive(after: (10 -> streams_after_restart(old)))
    end
  end
end
