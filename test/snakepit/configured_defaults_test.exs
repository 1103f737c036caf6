defmodule Snakepit.ConfiguredDefaultsTest do
  # Fault-tolerance helpers take their defaults from `config :snakepit`.
  use ExUnit.Case, async: false

  setup do
    keys = [:circuit_breaker_failure_threshold, :retry_max_attempts, :health_monitor_max_crashes]
    on_exit(fn -> Enum.each(keys, &Application.delete_env(:snakepit, &1)) end)
  end

  test "configured values replace the built-in defaults; explicit options still win" do
    Application.put_env(:snakepit, :circuit_breaker_failure_threshold, 7)
    Application.put_env(:snakepit, :retry_max_attempts, 9)
    Application.put_env(:snakepit, :health_monitor_max_crashes, 4)

    assert Snakepit.CircuitBreaker.State.new().failure_threshold == 7
    assert Snakepit.CircuitBreaker.State.new(failure_threshold: 2).failure_threshold == 2
    assert Snakepit.RetryPolicy.new().max_attempts == 9
    assert Snakepit.HealthMonitor.State.new(pool: :p).max_crashes == 4
  end
end
