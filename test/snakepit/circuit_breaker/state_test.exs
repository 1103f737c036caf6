defmodule Snakepit.CircuitBreaker.StateTest do
  use ExUnit.Case, async: true

  alias Snakepit.CircuitBreaker.State

  defp breaker(opts \\ []),
    do: State.new(Keyword.merge([failure_threshold: 3, reset_timeout_ms: 100], opts))

  defp fail_times(s, n, now),
    do: Enum.reduce(1..n//1, s, fn _, acc -> State.failure(acc, now) end)

  describe "new/1" do
    test "defaults" do
      s = State.new()

      assert %State{
               state: :closed,
               failure_threshold: 5,
               reset_timeout_ms: 30_000,
               half_open_max_calls: 1
             } = s
    end

    test "rejects bad values naming the option" do
      for {key, value} <- [
            failure_threshold: 0,
            failure_threshold: -1,
            reset_timeout_ms: 1.5,
            half_open_max_calls: "1",
            reset_timeout_ms: nil
          ] do
        assert_raise ArgumentError, ~r/#{inspect(key)}/, fn -> State.new([{key, value}]) end
      end

      assert_raise ArgumentError, ~r/:name/, fn -> State.new(name: "cb") end
    end
  end

  describe "closed" do
    test "opens exactly at the threshold" do
      s = breaker() |> fail_times(2, 0)
      assert s.state == :closed
      s = State.failure(s, 5)
      assert %State{state: :open, failure_count: 3, opened_at: 5, last_failure_time: 5} = s
    end

    test "a success resets the consecutive failure count" do
      s = breaker() |> fail_times(2, 0) |> State.success(1) |> fail_times(2, 2)
      assert %State{state: :closed, failure_count: 2, success_count: 1} = s
    end

    test "acquire admits and counts" do
      {verdict, s} = State.acquire(breaker(), 0)
      assert verdict == :ok
      assert s.total_calls == 1
      assert {true, _} = State.allow?(s, 0)
    end
  end

  describe "open" do
    setup do
      %{s: breaker() |> fail_times(3, 1_000)}
    end

    test "rejects before the reset timeout", %{s: s} do
      assert {false, _} = State.allow?(s, 1_099)
      assert {:rejected, s2} = State.acquire(s, 1_099)
      assert s2.rejected_calls == 1
      assert {:open, _} = State.status(s, 1_099)
    end

    test "becomes half-open at the reset timeout", %{s: s} do
      assert {:half_open, _} = State.status(s, 1_100)
      assert {true, _} = State.allow?(s, 1_100)
    end

    test "failures while open do not extend the timeout", %{s: s} do
      s = State.failure(s, 1_050)
      assert s.failure_count == 4
      assert {:half_open, _} = State.status(s, 1_100)
    end

    test "a success while open is counted but does not close", %{s: s} do
      s = State.success(s, 1_050)
      assert %State{state: :open, success_count: 1} = s
    end
  end

  describe "half-open" do
    setup do
      s = breaker(half_open_max_calls: 2) |> fail_times(3, 0) |> State.refresh(100)
      assert s.state == :half_open
      %{s: s}
    end

    test "admits at most half_open_max_calls", %{s: s} do
      {:ok, s} = State.acquire(s, 100)
      {:ok, s} = State.acquire(s, 100)
      assert s.half_open_calls == 2
      assert {false, _} = State.allow?(s, 100)
      assert {:rejected, _} = State.acquire(s, 100)
    end

    test "a success closes the circuit", %{s: s} do
      {:ok, s} = State.acquire(s, 100)
      s = State.success(s, 101)
      assert %State{state: :closed, failure_count: 0, half_open_calls: 0, opened_at: nil} = s
    end

    test "a failure reopens and restarts the timeout", %{s: s} do
      {:ok, s} = State.acquire(s, 100)
      s = State.failure(s, 150)
      assert %State{state: :open, opened_at: 150, half_open_calls: 0} = s
      assert {:open, _} = State.status(s, 249)
      assert {:half_open, _} = State.status(s, 250)
    end
  end

  test "reset closes from every state and keeps totals" do
    open = breaker() |> fail_times(3, 0)
    half = State.refresh(open, 100)
    {:ok, closed} = State.acquire(breaker(), 0)

    for s <- [open, half, closed] do
      r = State.reset(s)
      assert %State{state: :closed, failure_count: 0, success_count: 0, half_open_calls: 0} = r
      assert r.total_calls == s.total_calls
    end
  end

  test "stats exposes the documented fields" do
    {stats, _} = State.stats(breaker(name: :cb), 0)

    for key <- [
          :state,
          :failure_count,
          :success_count,
          :failure_threshold,
          :reset_timeout_ms,
          :half_open_max_calls,
          :half_open_calls,
          :last_failure_time,
          :name
        ] do
      assert Map.has_key?(stats, key)
    end

    assert stats.name == :cb
  end

  # Property-style check: random operation sequences against invariants and
  # a small independent model of when the circuit must be open.
  test "random operation sequences keep the invariants" do
    for seed <- 1..300 do
      :rand.seed(:exsss, {seed, seed * 7, seed * 13})
      threshold = Enum.random(1..4)
      max_calls = Enum.random(1..3)
      timeout = Enum.random(1..50)

      s0 =
        State.new(
          failure_threshold: threshold,
          reset_timeout_ms: timeout,
          half_open_max_calls: max_calls
        )

      Enum.reduce(1..60, {s0, 0}, fn _, {s, now} ->
        now = now + Enum.random(0..20)
        before = State.refresh(s, now)

        s =
          case Enum.random([:acquire, :success, :failure, :failure, :allow, :reset]) do
            :acquire ->
              {verdict, s2} = State.acquire(s, now)
              assert verdict == :ok or before.state != :closed
              s2

            :success ->
              s2 = State.success(s, now)
              if before.state == :half_open, do: assert(s2.state == :closed)
              s2

            :failure ->
              s2 = State.failure(s, now)

              case before.state do
                :closed ->
                  assert s2.state ==
                           if(before.failure_count + 1 >= threshold, do: :open, else: :closed)

                _ ->
                  assert s2.state == :open
              end

              s2

            :allow ->
              {_, s2} = State.allow?(s, now)
              s2

            :reset ->
              State.reset(s)
          end

        assert s.failure_count >= 0
        assert s.half_open_calls <= s.half_open_max_calls
        if s.state == :closed, do: assert(s.half_open_calls == 0 and s.failure_count < threshold)
        if s.state == :open, do: assert(is_integer(s.opened_at))
        {s, now}
      end)
    end
  end
end
