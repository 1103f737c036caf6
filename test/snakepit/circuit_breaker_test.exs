defmodule Snakepit.CircuitBreakerTest do
  use ExUnit.Case, async: true

  alias Snakepit.CircuitBreaker

  # A fake monotonic clock the test moves by hand.
  defp clock do
    ref = :atomics.new(1, signed: true)
    {ref, fn -> :atomics.get(ref, 1) end}
  end

  defp advance(ref, ms), do: :atomics.add(ref, 1, ms)

  defp start(opts) do
    {ref, fun} = clock()
    cb = start_supervised!({CircuitBreaker, Keyword.put(opts, :clock, fun)})
    {cb, ref}
  end

  test "passes results through while closed" do
    {cb, _} = start(failure_threshold: 2)
    assert CircuitBreaker.call(cb, fn -> {:ok, 1} end) == {:ok, 1}
    assert CircuitBreaker.call(cb, fn -> :plain end) == :plain
    assert CircuitBreaker.state(cb) == :closed
    assert %{success_count: 2, total_calls: 2} = CircuitBreaker.stats(cb)
  end

  test "opens after the threshold and rejects without calling" do
    {cb, _} = start(failure_threshold: 2)
    assert {:error, :boom} = CircuitBreaker.call(cb, fn -> {:error, :boom} end)
    assert :error = CircuitBreaker.call(cb, fn -> :error end)
    assert CircuitBreaker.state(cb) == :open
    refute CircuitBreaker.allow_call?(cb)

    test_pid = self()
    assert {:error, :circuit_open} = CircuitBreaker.call(cb, fn -> send(test_pid, :called) end)
    refute_received :called
    assert %{rejected_calls: 1, failure_count: 2} = CircuitBreaker.stats(cb)
  end

  test "half-open after the reset timeout; success closes, failure reopens" do
    {cb, clock} = start(failure_threshold: 1, reset_timeout_ms: 1_000)
    {:error, _} = CircuitBreaker.call(cb, fn -> {:error, :x} end)
    assert CircuitBreaker.state(cb) == :open

    advance(clock, 999)
    assert CircuitBreaker.state(cb) == :open
    advance(clock, 1)
    assert CircuitBreaker.state(cb) == :half_open

    assert {:error, :still_bad} = CircuitBreaker.call(cb, fn -> {:error, :still_bad} end)
    assert CircuitBreaker.state(cb) == :open

    advance(clock, 1_000)
    assert {:ok, :fine} = CircuitBreaker.call(cb, fn -> {:ok, :fine} end)
    assert CircuitBreaker.state(cb) == :closed
  end

  test "exceptions count as failures and are re-raised" do
    {cb, _} = start(failure_threshold: 1)

    assert_raise RuntimeError, "kaboom", fn ->
      CircuitBreaker.call(cb, fn -> raise "kaboom" end)
    end

    assert CircuitBreaker.state(cb) == :open
    CircuitBreaker.reset(cb)
    assert catch_throw(CircuitBreaker.call(cb, fn -> throw(:ball) end)) == :ball
    assert CircuitBreaker.state(cb) == :open
  end

  test "only half_open_max_calls probes run at once" do
    {cb, clock} = start(failure_threshold: 1, reset_timeout_ms: 10, half_open_max_calls: 1)
    :ok = CircuitBreaker.record_failure(cb)
    advance(clock, 10)

    test_pid = self()

    probe =
      spawn(fn ->
        CircuitBreaker.call(cb, fn ->
          send(test_pid, :probing)
          receive do: (:finish -> {:ok, :recovered})
        end)

        send(test_pid, :probe_done)
      end)

    assert_receive :probing
    assert {:error, :circuit_open} = CircuitBreaker.call(cb, fn -> {:ok, :second} end)
    send(probe, :finish)
    assert_receive :probe_done
    assert CircuitBreaker.state(cb) == :closed
  end

  test "a probe caller that dies frees its slot and reopens the circuit" do
    {cb, clock} = start(failure_threshold: 1, reset_timeout_ms: 10)
    :ok = CircuitBreaker.record_failure(cb)
    advance(clock, 10)

    test_pid = self()

    {probe, ref} =
      spawn_monitor(fn ->
        CircuitBreaker.call(cb, fn ->
          send(test_pid, :probing)
          receive do: (:never -> :ok)
        end)
      end)

    assert_receive :probing
    Process.exit(probe, :kill)
    assert_receive {:DOWN, ^ref, :process, ^probe, :killed}
    assert CircuitBreaker.state(cb) == :open

    advance(clock, 10)
    assert CircuitBreaker.allow_call?(cb)
  end

  test "manual record_success/record_failure and allow_call?" do
    {cb, clock} = start(failure_threshold: 2, reset_timeout_ms: 5)
    assert CircuitBreaker.allow_call?(cb)
    :ok = CircuitBreaker.record_failure(cb)
    :ok = CircuitBreaker.record_success(cb)
    :ok = CircuitBreaker.record_failure(cb)
    assert CircuitBreaker.state(cb) == :closed
    :ok = CircuitBreaker.record_failure(cb)
    refute CircuitBreaker.allow_call?(cb)
    advance(clock, 5)
    assert CircuitBreaker.allow_call?(cb)
    :ok = CircuitBreaker.record_success(cb)
    assert CircuitBreaker.state(cb) == :closed
  end

  test "the real timer moves an open circuit to half-open" do
    cb = start_supervised!({CircuitBreaker, failure_threshold: 1, reset_timeout_ms: 20})
    # The breaker's own timer sends it :reset_timeout; trace its mailbox to await it.
    :erlang.trace(cb, true, [:receive])
    :ok = CircuitBreaker.record_failure(cb)
    assert_receive {:trace, ^cb, :receive, :reset_timeout}, 1_000
    assert CircuitBreaker.state(cb) == :half_open
  end

  test "names and registration" do
    start_supervised!({CircuitBreaker, name: :cb_named_test})
    assert CircuitBreaker.state(:cb_named_test) == :closed
    assert %{name: :cb_named_test} = CircuitBreaker.stats(:cb_named_test)
  end

  test "bad options raise ArgumentError naming the option" do
    assert_raise ArgumentError, ~r/:failure_threshold/, fn ->
      CircuitBreaker.start_link(failure_threshold: -1)
    end

    assert_raise ArgumentError, ~r/:reset_timeout_ms/, fn ->
      CircuitBreaker.start_link(reset_timeout_ms: "30s")
    end

    assert_raise ArgumentError, ~r/:fail_threshold/, fn ->
      CircuitBreaker.start_link(fail_threshold: 1)
    end

    assert_raise ArgumentError, ~r/:clock/, fn -> CircuitBreaker.start_link(clock: 5) end
  end
end
