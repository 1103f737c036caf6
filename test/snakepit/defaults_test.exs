defmodule Snakepit.DefaultsTest do
  # Changes application env: not async.
  use ExUnit.Case, async: false

  alias Snakepit.Defaults

  doctest Snakepit.Defaults

  @keys [
    :timeout_profile,
    :pool_queue_timeout,
    :pool_request_timeout,
    :default_timeout,
    :grpc_command_timeout,
    :pool_max_queue_size,
    :circuit_breaker_reset_timeout,
    :affinity,
    :worker_call_margin_ms,
    :pool_reply_margin_ms
  ]

  setup do
    Snakepit.Test.AppEnv.isolate(@keys)
  end

  test "documented plain defaults" do
    assert Defaults.pool_max_queue_size() == 1000
    assert Defaults.pool_max_workers() == 150
    assert Defaults.config_default_batch_size() == 8
    assert Defaults.config_default_batch_delay() == 750
    assert Defaults.config_default_threads_per_worker() == 10
    assert Defaults.crash_barrier_backoff_ms() == [50, 100, 200]
    assert Defaults.crash_barrier_taint_duration_ms() == 60_000
    assert Defaults.crash_barrier_max_restarts() == 1
    assert Defaults.heartbeat_ping_interval_ms() == 2_000
    assert Defaults.heartbeat_timeout_ms() == 10_000
    assert Defaults.heartbeat_max_missed() == 3
    assert Defaults.heartbeat_initial_delay_ms() == 0
    assert Defaults.session_default_ttl() == 3600
    assert Defaults.session_max_sessions() == 10_000
    assert Defaults.session_warning_threshold() == 0.8
    assert Defaults.lifecycle_check_interval() == 60_000
    assert Defaults.graceful_shutdown_timeout_ms() == 6_000
    assert Defaults.worker_call_margin_ms() == 1_000
    assert Defaults.pool_reply_margin_ms() == 200
    assert Defaults.pool_await_ready_timeout() == 15_000
    assert Defaults.default_affinity_mode() == :hint
    assert Defaults.default_worker_profile() == :process
    assert Defaults.retry_backoff_sequence() == [100, 200, 400, 800, 1600]
    assert Defaults.tcp_host() == "127.0.0.1"
    assert Defaults.cancel_grace_ms() == 2_000
    assert Defaults.max_message_bytes() == 256 * 1024 * 1024
    assert Defaults.instance_token() == nil
    assert Defaults.default_pool_size() == Application.get_env(:snakepit, :pool_size)
  end

  test "every timeout profile has its three budgets" do
    for {name, expected} <- [
          balanced: {300_000, 900_000, 10_000},
          production: {300_000, 900_000, 10_000},
          production_strict: {60_000, 300_000, 5_000},
          development: {900_000, 3_600_000, 60_000},
          ml_inference: {900_000, 3_600_000, 60_000},
          batch: {3_600_000, :infinity, 300_000}
        ] do
      Application.put_env(:snakepit, :timeout_profile, name)
      assert Defaults.timeout_profile() == name

      assert {Defaults.default_timeout(), Defaults.stream_timeout(), Defaults.queue_timeout()} ==
               expected

      {default, stream, queue} = expected
      assert Defaults.pool_request_timeout() == default
      assert Defaults.pool_streaming_timeout() == stream
      assert Defaults.pool_queue_timeout() == queue
      assert Defaults.checkout_timeout() == queue
      assert Defaults.grpc_command_timeout() == Defaults.rpc_timeout(default)
      assert Defaults.grpc_client_execute_timeout() == Defaults.rpc_timeout(default)
    end
  end

  test "an unknown profile falls back to :balanced" do
    Application.put_env(:snakepit, :timeout_profile, :nope)
    assert Defaults.timeout_profile() == :balanced
    assert Defaults.queue_timeout() == 10_000
  end

  test "legacy per-key settings win over the profile" do
    Application.put_env(:snakepit, :timeout_profile, :production_strict)
    Application.put_env(:snakepit, :pool_queue_timeout, 1_234)
    Application.put_env(:snakepit, :pool_request_timeout, 4_321)
    Application.put_env(:snakepit, :grpc_command_timeout, 999)
    assert Defaults.pool_queue_timeout() == 1_234
    assert Defaults.pool_request_timeout() == 4_321
    assert Defaults.grpc_command_timeout() == 999
    # The others keep deriving from the profile.
    assert Defaults.checkout_timeout() == 5_000
    assert Defaults.pool_streaming_timeout() == 300_000
  end

  test "plain keys are read from the application env, with documented aliases" do
    Application.put_env(:snakepit, :pool_max_queue_size, 7)
    Application.put_env(:snakepit, :circuit_breaker_reset_timeout, 123)
    Application.put_env(:snakepit, :affinity, :strict_queue)
    assert Defaults.pool_max_queue_size() == 7
    assert Defaults.circuit_breaker_reset_timeout_ms() == 123
    assert Defaults.default_affinity_mode() == :strict_queue
  end

  test "rpc_timeout subtracts both margins, scaled down for small budgets" do
    assert Defaults.rpc_timeout(60_000) == 58_800
    assert Defaults.rpc_timeout(12_000) == 10_800
    assert Defaults.rpc_timeout(200) == 180
    assert Defaults.rpc_timeout(0) == 0
    assert Defaults.rpc_timeout(:infinity) == :infinity
    Application.put_env(:snakepit, :worker_call_margin_ms, 50)
    Application.put_env(:snakepit, :pool_reply_margin_ms, 50)
    assert Defaults.rpc_timeout(60_000) == 59_900

    # Monotonic: a larger budget never gives a smaller inner timeout.
    values = Enum.map(0..40_000//250, &Defaults.rpc_timeout/1)
    assert values == Enum.sort(values)
  end
end
