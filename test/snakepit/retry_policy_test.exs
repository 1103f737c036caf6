defmodule Snakepit.RetryPolicyTest do
  use ExUnit.Case, async: true

  alias Snakepit.{Error, RetryPolicy}

  doctest RetryPolicy

  test "documented defaults" do
    assert %RetryPolicy{
             max_attempts: 3,
             backoff_ms: [100, 200, 400, 800, 1600],
             base_backoff_ms: 100,
             backoff_multiplier: 2.0,
             max_backoff_ms: 30_000,
             jitter: false,
             jitter_factor: 0.25,
             retriable_errors: errors
           } = RetryPolicy.new([])

    assert :timeout in errors and :unavailable in errors
  end

  test "without jitter the list, then exponential growth, capped" do
    policy = RetryPolicy.new([])
    delays = Enum.map(1..10, &RetryPolicy.backoff_for_attempt(policy, &1))
    assert delays == [100, 200, 400, 800, 1600, 3200, 6400, 12_800, 25_600, 30_000]
  end

  test "an empty list gives pure exponential backoff from the base" do
    policy = RetryPolicy.new(backoff_ms: [], base_backoff_ms: 10, backoff_multiplier: 3)
    assert Enum.map(1..4, &RetryPolicy.backoff_for_attempt(policy, &1)) == [10, 30, 90, 270]
  end

  test "huge attempts stay capped and do not overflow" do
    policy = RetryPolicy.new(backoff_multiplier: 1.0e6, max_backoff_ms: 5_000)
    assert RetryPolicy.backoff_for_attempt(policy, 10_000) == 5_000
  end

  test "property: backoff is never above the cap and grows monotonically without jitter" do
    for _ <- 1..200 do
      policy =
        RetryPolicy.new(
          backoff_ms:
            Enum.map(1..Enum.random(0..5)//1, fn _ -> Enum.random(0..500) end) |> Enum.sort(),
          base_backoff_ms: Enum.random(0..1000),
          backoff_multiplier: 1 + :rand.uniform() * 3,
          max_backoff_ms: Enum.random(0..10_000)
        )

      delays = Enum.map(1..30, &RetryPolicy.backoff_for_attempt(policy, &1))
      assert Enum.all?(delays, &(&1 >= 0 and &1 <= policy.max_backoff_ms))
      tail = Enum.drop(delays, length(policy.backoff_ms))
      assert tail == Enum.sort(tail)
    end
  end

  test "property: jitter stays within its factor of the delay and under the cap" do
    for _ <- 1..50 do
      factor = :rand.uniform()
      cap = Enum.random(1..5_000)

      policy =
        RetryPolicy.new(
          jitter: true,
          jitter_factor: factor,
          max_backoff_ms: cap,
          backoff_ms: [0, 1, 3, 1000]
        )

      plain = %{policy | jitter: false}

      for attempt <- 1..12, _draw <- 1..100 do
        base = RetryPolicy.backoff_for_attempt(plain, attempt)
        delay = RetryPolicy.backoff_for_attempt(policy, attempt)
        assert delay >= base * (1 - factor) - 1.0e-9, "#{delay} below #{base} * (1 - #{factor})"
        assert delay <= base * (1 + factor) + 1.0e-9, "#{delay} above #{base} * (1 + #{factor})"
        assert delay <= cap
      end
    end
  end

  test "jitter actually varies the delay" do
    policy = RetryPolicy.new(jitter: true, backoff_ms: [10_000])
    draws = for _ <- 1..100, do: RetryPolicy.backoff_for_attempt(policy, 1)
    assert length(Enum.uniq(draws)) > 10
  end

  test "should_retry? counts attempts made" do
    policy = RetryPolicy.new(max_attempts: 1)
    assert RetryPolicy.should_retry?(policy, 0)
    refute RetryPolicy.should_retry?(policy, 1)
  end

  describe "retry_for_error?/2" do
    setup do
      %{policy: RetryPolicy.new(retriable_errors: [:timeout, :unavailable])}
    end

    test "tuples, atoms and detail tuples", %{policy: p} do
      assert RetryPolicy.retry_for_error?(p, {:error, :timeout})
      assert RetryPolicy.retry_for_error?(p, :unavailable)
      assert RetryPolicy.retry_for_error?(p, {:error, {:timeout, 5_000}})
      refute RetryPolicy.retry_for_error?(p, {:error, :circuit_open})
      refute RetryPolicy.retry_for_error?(p, {:error, "timeout"})
      refute RetryPolicy.retry_for_error?(p, {:ok, :timeout})
      refute RetryPolicy.retry_for_error?(p, :ok)
    end

    test "Snakepit.Error by category, grpc status or details.reason", %{policy: p} do
      assert RetryPolicy.retry_for_error?(p, {:error, Error.timeout_error("slow")})
      assert RetryPolicy.retry_for_error?(p, {:error, Error.grpc_error(:unavailable, "down")})

      assert RetryPolicy.retry_for_error?(
               p,
               {:error, Error.worker_error("x", %{reason: :timeout})}
             )

      refute RetryPolicy.retry_for_error?(p, {:error, Error.validation_error("bad")})
    end

    test ":all retries everything but success" do
      p = RetryPolicy.new(retriable_errors: :all)
      assert RetryPolicy.retry_for_error?(p, {:error, "anything"})
      assert RetryPolicy.retry_for_error?(p, %RuntimeError{})
      refute RetryPolicy.retry_for_error?(p, {:ok, 1})
    end
  end

  describe "bad options raise ArgumentError naming the option" do
    for {key, value} <- [
          max_attempts: 0,
          max_attempts: 2.5,
          backoff_ms: 100,
          backoff_ms: [100, -1],
          base_backoff_ms: -5,
          backoff_multiplier: 0.5,
          max_backoff_ms: :infinity,
          jitter: "yes",
          jitter_factor: 1.5,
          retriable_errors: ["timeout"],
          retriable_errors: :timeout
        ] do
      test "#{key}: #{inspect(value)}" do
        assert_raise ArgumentError, ~r/#{inspect(unquote(key))}/, fn ->
          RetryPolicy.new([{unquote(key), unquote(Macro.escape(value))}])
        end
      end
    end

    test "unknown option" do
      assert_raise ArgumentError, ~r/max_attempt/, fn -> RetryPolicy.new(max_attempt: 3) end
      assert_raise ArgumentError, fn -> RetryPolicy.new(%{max_attempts: 3}) end
    end

    test "attempt must be positive" do
      assert_raise ArgumentError, ~r/attempt/, fn ->
        RetryPolicy.backoff_for_attempt(RetryPolicy.new(), 0)
      end
    end
  end
end
