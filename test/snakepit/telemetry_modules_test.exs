defmodule Snakepit.TelemetryModulesTest do
  # The telemetry helpers that need no worker: naming and sanitizing,
  # control messages, spans, the ML catalog, handlers and the optional
  # library bridges.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Telemetry
  alias Snakepit.Telemetry.{Control, Correlation, Events, Naming, SafeMetadata, Span}

  doctest Naming
  doctest SafeMetadata
  doctest Control
  doctest Correlation
  doctest Events

  describe "Naming and SafeMetadata create no atoms" do
    test "unknown names, keys and values stay strings" do
      atoms = :erlang.system_info(:atom_count)

      for i <- 1..200 do
        tag = "never_an_atom_#{i}_#{System.unique_integer([:positive])}"
        assert {:error, :unknown_event} = Naming.from_parts([tag, "start"])
        assert {:error, :unknown_measurement_key} = Naming.measurement_key(tag)
        assert {:ok, %{^tag => "v"}} = SafeMetadata.sanitize(%{tag => "v"})
        assert {:ok, %{^tag => 1}} = SafeMetadata.measurements(%{tag => 1})
      end

      assert :erlang.system_info(:atom_count) == atoms
    end

    test "values are bounded: long strings cut, deep nesting dropped, odd terms dropped" do
      long = String.duplicate("é", 1000)
      deep = %{"a" => %{"b" => %{"c" => %{"d" => 1}}}}

      {:ok, clean} =
        SafeMetadata.sanitize(%{
          "s" => long,
          "deep" => deep,
          "f" => self(),
          "l" => Enum.to_list(1..100)
        })

      assert byte_size(clean["s"]) <= 1024 and String.valid?(clean["s"])
      # Three levels of maps: the metadata, "deep", "a".
      assert clean["deep"] == %{"a" => %{}}
      refute Map.has_key?(clean, "f")
      assert length(clean["l"]) == 64
      assert {:error, :not_a_map} = SafeMetadata.sanitize([1])
      assert {:error, {:not_a_number, "x"}} = SafeMetadata.measurements(%{"x" => "1"})
    end
  end

  test "correlation ids are 32 lowercase hex digits, distinct across processes" do
    ids =
      1..4
      |> Enum.map(fn _ -> Task.async(fn -> for _ <- 1..500, do: Correlation.new_id() end) end)
      |> Task.await_many()
      |> List.flatten()

    assert Enum.all?(ids, &(&1 =~ ~r/\A[0-9a-f]{32}\z/))
    assert length(Enum.uniq(ids)) == 2_000
    # One VM, one random half.
    assert ids |> Enum.map(&binary_part(&1, 0, 16)) |> Enum.uniq() |> length() == 1
  end

  describe "Span" do
    setup do
      parent = self()

      :ok =
        Telemetry.attach_many(
          "span-test",
          for(p <- [:start, :stop, :exception], do: [:my_app, :work, p]),
          fn e, m, md, _ -> send(parent, {:event, e, m, md}) end,
          nil
        )

      on_exit(fn -> Telemetry.detach("span-test") end)
    end

    test "span/3 emits start and stop around the function and returns its result" do
      assert Span.span([:my_app, :work], %{job: 1}, fn -> :done end) == :done

      assert_received {:event, [:my_app, :work, :start], %{system_time: _, monotonic_time: _},
                       %{job: 1}}

      assert_received {:event, [:my_app, :work, :stop], %{duration: d}, %{job: 1}}
      assert is_integer(d) and d >= 0
    end

    test "span/3 emits the exception event and re-raises" do
      assert_raise RuntimeError, "boom", fn ->
        Span.span([:my_app, :work], %{}, fn -> raise "boom" end)
      end

      assert_received {:event, [:my_app, :work, :exception], %{duration: _},
                       %{kind: :error, reason: %RuntimeError{}}}

      assert catch_throw(Span.span([:my_app, :work], %{}, fn -> throw(:ball) end)) == :ball
      assert_received {:event, [:my_app, :work, :exception], _, %{kind: :throw, reason: :ball}}
    end

    test "manual spans merge the stop metadata" do
      ref = Span.start_span([:my_app, :work], %{job: 2})
      assert :ok = Span.end_span(ref, %{rows: 10})
      assert_received {:event, [:my_app, :work, :stop], _, %{job: 2, rows: 10}}
    end
  end

  test "the ML catalog is part of Snakepit's catalog and every event has a schema" do
    assert Events.all_ml_events() -- Telemetry.events() == []
    assert [:snakepit, :gpu, :memory, :sampled] in Events.gpu_profiler_events()
    assert Enum.all?(Events.gpu_profiler_events(), &match?([:snakepit, :gpu | _], &1))

    for event <- Events.all_ml_events(),
        do: assert(%{measurements: _, metadata: _} = Events.event_schema(event))
  end

  test "the default and logger handlers attach idempotently and log" do
    assert :ok = Telemetry.attach_session_handlers()
    assert :ok = Telemetry.attach_session_handlers()
    assert :ok = Telemetry.attach_heartbeat_handlers()
    assert :ok = Telemetry.attach_program_handlers()

    on_exit(fn ->
      for g <- [:session, :heartbeat], do: Telemetry.detach({Telemetry, :default, g})
    end)

    assert :ok = Snakepit.Telemetry.Handlers.Logger.attach()
    on_exit(&Snakepit.Telemetry.Handlers.Logger.detach/0)

    log =
      capture_log(fn ->
        Telemetry.emit([:snakepit, :circuit_breaker, :opened], %{failure_count: 3}, %{
          pool: :p,
          reason: :x
        })
      end)

    assert log =~ "snakepit.circuit_breaker.opened" and log =~ "failure_count"
  end

  describe "optional libraries" do
    test "metrics without :telemetry_metrics raise a clear error; with it they are definitions" do
      error =
        assert_raise Snakepit.OptionalDependencyError, fn ->
          Snakepit.TelemetryMetrics.metrics()
        end

      assert Exception.message(error) =~ ":telemetry_metrics"

      assert_raise Snakepit.OptionalDependencyError, fn ->
        Snakepit.Telemetry.Handlers.Metrics.definitions()
      end

      # A stand-in with Telemetry.Metrics' constructor shape, loaded only here.
      Code.compile_string("""
      defmodule Telemetry.Metrics do
        for kind <- [:counter, :sum, :last_value, :summary, :distribution] do
          def unquote(kind)(name, opts), do: %{kind: unquote(kind), name: name, opts: opts}
        end
      end
      """)

      on_exit(fn ->
        :code.purge(Telemetry.Metrics)
        :code.delete(Telemetry.Metrics)
      end)

      metrics = Snakepit.TelemetryMetrics.metrics()

      assert %{kind: :summary, name: "snakepit.python.call.stop.duration"} in Enum.map(
               metrics,
               &Map.take(&1, [:kind, :name])
             )

      assert Enum.all?(
               Snakepit.Telemetry.Handlers.Metrics.prometheus_definitions(),
               &(&1.kind != :summary)
             )

      assert Snakepit.TelemetryMetrics.reporter_children() == []
    end

    test "OpenTelemetry setup is a no-op unless enabled and the SDK is loaded" do
      assert :ok = Snakepit.Telemetry.OpenTelemetry.setup()
      Application.put_env(:snakepit, :opentelemetry, enabled: true)
      on_exit(fn -> Application.delete_env(:snakepit, :opentelemetry) end)
      log = capture_log(fn -> assert :ok = Snakepit.Telemetry.OpenTelemetry.setup() end)
      assert log =~ "SDK is not loaded"
      assert Telemetry.detach({Snakepit.Telemetry.OpenTelemetry, :spans}) == {:error, :not_found}
    end
  end
end
