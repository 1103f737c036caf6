defmodule Snakepit.OpenTelemetryTest do
  # The documented configuration forms, read at application start, turn
  # calls into spans. The :opentelemetry SDK is a hex package (not reachable
  # here): where it is absent, a stand-in with the three functions Snakepit
  # calls (`:opentelemetry.get_tracer/1` and `status/2`,
  # `:otel_tracer.start_span/3`, `:otel_span.set_status/2` and
  # `end_span/2`) reports each span to this test, and is removed after.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.AppPool

  @stand_ins [:opentelemetry, :otel_tracer, :otel_span]

  setup_all do
    unless Code.ensure_loaded?(:otel_tracer) do
      define_stand_ins()

      on_exit(fn ->
        for m <- @stand_ins do
          :code.purge(m)
          :code.delete(m)
        end
      end)
    end

    on_exit(fn -> Application.delete_env(:snakepit, :opentelemetry) end)
    :ok
  end

  defp define_stand_ins do
    env = Macro.Env.location(__ENV__)

    Module.create(
      :opentelemetry,
      quote do
        def get_tracer(name), do: {:tracer, name}
        def status(code, message), do: {:status, code, message}
      end,
      env
    )

    Module.create(
      :otel_tracer,
      quote do
        def start_span(_tracer, name, opts) do
          span = make_ref()
          send(:persistent_term.get(:otel_stand_in), {:span, span, name, opts})
          span
        end
      end,
      env
    )

    Module.create(
      :otel_span,
      quote do
        def set_status(span, status),
          do: send(:persistent_term.get(:otel_stand_in), {:status, span, status})

        def end_span(span, _time), do: send(:persistent_term.get(:otel_stand_in), {:ended, span})
      end,
      env
    )
  end

  setup do
    :persistent_term.put(:otel_stand_in, self())
    :ok
  end

  defp start_with(config) do
    AppPool.start!(
      pool_size: 1,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
      opentelemetry: config
    )
  end

  for {form, config} <- [keyword: [enabled: true], map: %{enabled: true}] do
    test "the #{form} form alone turns each call into a span at start" do
      start_with(unquote(Macro.escape(config)))
      id = "otel-#{System.unique_integer([:positive])}"
      assert {:ok, _} = Snakepit.execute("ping", %{}, correlation_id: id)

      assert_receive {:span, span, "snakepit.request.executed", %{attributes: attributes}}, 5_000
      assert attributes["snakepit.correlation_id"] == id
      assert attributes["snakepit.command"] == "ping"
      assert_receive {:ended, ^span}
    end
  end

  test "a failed call's span has the error status" do
    start_with(enabled: true)
    assert {:error, _} = Snakepit.execute("error_demo", %{"error_type" => "value"})
    assert_receive {:span, span, "snakepit.request.executed", _}, 5_000
    assert_receive {:status, ^span, {:status, :error, ""}}
  end

  test "off, or a bad value, records nothing and says why" do
    start_with(enabled: false)
    assert {:ok, _} = Snakepit.execute("ping", %{})
    refute_receive {:span, _, _, _}, 200

    for bad <- [:yes, [enabled: "true"], "on"] do
      Application.put_env(:snakepit, :opentelemetry, bad)

      log =
        ExUnit.CaptureLog.capture_log(fn ->
          assert :ok = Snakepit.Telemetry.OpenTelemetry.setup()
        end)

      assert log =~ "ignored"
    end
  end
end
