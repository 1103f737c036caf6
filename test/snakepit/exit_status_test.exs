defmodule Snakepit.ExitStatusTest do
  use ExUnit.Case, async: true
  doctest Snakepit.Worker.ExitStatus
  doctest Snakepit.Redact

  test "a worker's state is redacted in its crash report" do
    state = %{
      id: "w1",
      config: %{adapter_env: [{"API_KEY", "sk-live-123"}], pool_size: 2},
      output: {["printed sk-live-123"], []}
    }

    status =
      Snakepit.Redact.status(%{
        state: state,
        message: {:snakepit_process, 123, {:stdout, "sk-live-123"}},
        reason: :boom,
        log: [:something]
      })

    refute inspect(status) =~ "sk-live-123"
    assert status.state.id == "w1"
    assert status.state.config.pool_size == 2
    assert status.message == {:snakepit_process, "[redacted]"}
    assert status.log == []
  end
end
