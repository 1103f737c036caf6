defmodule Snakepit.Examples.TelemetryBasicTest do
  # Runs examples/telemetry_basic.exs against a real pool, as `mix run`
  # would, and checks what it prints.
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureIO

  alias Snakepit.Test.AppPool

  @example Path.expand("../../examples/telemetry_basic.exs", __DIR__)

  test "the telemetry example shows both sides of a call, control and stats" do
    :ok = AppPool.start!(pool_size: 2)
    output = capture_io(fn -> Code.eval_file(@example) end)

    [call, off, filtered] =
      output
      |> String.split(["the same call with telemetry switched off", "with a filter that lets"])

    for event <-
          ~w(request.executed python.call.start python.tool.execution.stop python.span.stop python.call.stop),
        do: assert(call =~ "snakepit." <> event)

    assert call =~ "name=showcase.ml_analyze_text"
    assert off =~ "snakepit.request.executed" and not (off =~ "snakepit.python.")
    assert filtered =~ "snakepit.python.span.stop" and not (filtered =~ "snakepit.python.call.")
    assert output =~ "GrpcStream.stats()" and output =~ "run_time_ms"
  end
end
