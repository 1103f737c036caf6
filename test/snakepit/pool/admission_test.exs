defmodule Snakepit.Pool.AdmissionTest do
  # The queue discipline's decisions, without processes: the pool's
  # estimates, arrivals, dispatch and patience under a clock the test owns.
  use ExUnit.Case, async: true

  alias Snakepit.Pool.{Admission, State, Stats}

  defp learned(samples \\ [{"slow", 50}, {"fast", 2}]) do
    Enum.reduce(samples, Admission.new(nil), fn {cmd, ms}, a -> Admission.observe(a, cmd, ms) end)
  end

  test "run times are moving averages per command, and for the pool" do
    a = Admission.new(discipline: :deadline)
    assert Admission.estimate(a, "x") == nil
    a = Admission.observe(a, "x", 100)
    assert Admission.estimate(a, "x") == 100.0
    a = Admission.observe(a, "x", 200)
    assert Admission.estimate(a, "x") == 120.0
    # An unknown command falls back to the pool's average.
    assert Admission.estimate(a, "y") == 120.0
    # Bad samples are ignored.
    assert Admission.observe(a, "x", -5) == a
  end

  test "arrivals are refused when the work ahead and their own cannot fit their budget" do
    a = learned([{"slow", 50}])
    now = 1_000
    request = %{command: "slow", deadline: now + 300}

    # 2 slots: 8 ahead wait ~(4 + 0.5) x 50 = 225, + 50 = 275 <= 300.
    assert Admission.admit(a, request, 8, 2, now) == :ok
    # 10 ahead: 275 + 50 > 300.
    assert {:shed, 275} = Admission.admit(a, request, 10, 2, now)
    # No deadline, no estimate, or FIFO: never refused by prediction.
    assert Admission.admit(a, %{command: "slow", deadline: :infinity}, 100, 2, now) == :ok
    assert Admission.admit(Admission.new(nil), request, 100, 2, now) == :ok
    # A command never seen to run is not refused by prediction either.
    assert Admission.admit(a, %{request | command: "new"}, 100, 2, now) == :ok
    assert Admission.admit(Admission.new(discipline: :fifo), request, 100, 2, now) == :ok
  end

  test "dispatch needs the command's run time left; patience says when that runs out" do
    a = learned()
    request = %{command: "slow", deadline: 1_000}
    assert Admission.viable?(a, request, 950)
    refute Admission.viable?(a, request, 951)
    assert Admission.viable?(a, %{request | command: "fast"}, 990)
    assert Admission.patience(a, request, 900) == 50
    assert Admission.patience(a, request, 990) == 0
    assert Admission.patience(a, %{request | deadline: :infinity}, 0) == :infinity
    assert Admission.patience(Admission.new(discipline: :fifo), request, 0) == :infinity
  end

  test "a refusal at arrival is held a twentieth of the budget, at most the expected wait" do
    assert Admission.refusal_delay(%{deadline: 1_300}, 1_000, 500) == 15
    assert Admission.refusal_delay(%{deadline: 1_300}, 1_000, 4) == 4
    assert Admission.refusal_delay(%{deadline: :infinity}, 1_000, 500) == 0
  end

  describe "in the pool's state" do
    defp pool(clock) do
      config = %{name: :p, pool_size: 1, max_queue_size: 100, queue: [discipline: :deadline]}

      State.new(config, tainted?: fn _ -> false end, clock: fn -> Agent.get(clock, & &1) end)
      |> State.add_worker(%{id: "w1", pid: self(), capacity: 1})
    end

    defp tick(clock, ms), do: Agent.update(clock, &(&1 + ms))

    defp req(cmd, deadline),
      do: %{ref: make_ref(), command: cmd, deadline: deadline, now: 0, session_id: nil}

    test "run times come from check-ins; refusals are counted; doomed waiters are refused at dispatch" do
      {:ok, clock} = Agent.start_link(fn -> 0 end)
      s = pool(clock)

      # A first call runs 50 ms: the pool learns it.
      first = req("slow", 1_000)
      {:granted, _, s} = State.checkout(s, first)
      tick(clock, 50)
      {[], s} = State.checkin(s, first.ref)
      assert Admission.estimate(s.admission, "slow") == 50.0

      # Busy again; one waits (it fits), a second cannot fit.
      busy = req("slow", 10_000)
      {:granted, _, s} = State.checkout(s, busy)
      # Queued at 50 ms on the pool's clock.
      waiter = %{req("slow", 150) | now: 50}
      {:queued, s} = State.checkout(s, waiter)
      assert {:error, :overloaded, s} = State.checkout(s, req("slow", 120))
      assert Stats.pool(s).shed == 1
      assert State.patience(s, waiter) == 50

      # The busy call runs long: when it ends, the waiter's budget is gone.
      tick(clock, 120)
      assert Stats.pool(s).queue_delay_ms == 120
      {[{:reject, ^waiter, :overloaded}], s} = State.checkin(s, busy.ref)
      assert Stats.pool(s).shed == 2 and Stats.pool(s).queued == 0
    end

    test "FIFO dispatches whatever budget is left" do
      {:ok, clock} = Agent.start_link(fn -> 0 end)
      config = %{name: :p, pool_size: 1, max_queue_size: 100, queue: [discipline: :fifo]}

      s =
        State.new(config, tainted?: fn _ -> false end, clock: fn -> Agent.get(clock, & &1) end)
        |> State.add_worker(%{id: "w1", pid: self(), capacity: 1})

      first = req("slow", 10_000)
      {:granted, _, s} = State.checkout(s, first)
      waiter = req("slow", 10)
      {:queued, s} = State.checkout(s, waiter)
      tick(clock, 500)
      {[{:grant, ^waiter, _}], _s} = State.checkin(s, first.ref)
    end
  end
end
