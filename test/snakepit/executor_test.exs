defmodule Snakepit.ExecutorTest do
  use ExUnit.Case, async: true

  alias Snakepit.{CircuitBreaker, Error, Executor}

  # A function that fails with the given results in order, then keeps
  # returning the last one. Counts calls in an :atomics cell.
  defp scripted(results) do
    calls = :atomics.new(1, [])
    results = List.to_tuple(results)

    fun = fn ->
      n = :atomics.add_get(calls, 1, 1)
      elem(results, min(n, tuple_size(results)) - 1)
    end

    {fun, fn -> :atomics.get(calls, 1) end}
  end

  test "execute and execute_async" do
    assert Executor.execute(fn -> 42 end) == 42
    task = Executor.execute_async(fn -> {:ok, :async} end)
    assert %Task{} = task
    assert Task.await(task) == {:ok, :async}
  end

  describe "execute_with_retry/2" do
    test "retries retriable errors until success" do
      {fun, calls} = scripted([{:error, :timeout}, {:error, :unavailable}, {:ok, :done}])
      assert Executor.execute_with_retry(fun, backoff_ms: [0, 0]) == {:ok, :done}
      assert calls.() == 3
    end

    test "gives up after max_attempts with the last error" do
      {fun, calls} = scripted([{:error, :timeout}])

      assert Executor.execute_with_retry(fun,
               max_attempts: 4,
               backoff_ms: [0],
               base_backoff_ms: 0
             ) ==
               {:error, :timeout}

      assert calls.() == 4
    end

    test "does not retry non-retriable errors" do
      {fun, calls} = scripted([{:error, :bad_input}, {:ok, :never}])
      assert Executor.execute_with_retry(fun, backoff_ms: [0]) == {:error, :bad_input}
      assert calls.() == 1
    end

    test "retriable_errors: :all and Snakepit.Error reasons" do
      {fun, calls} = scripted([{:error, :weird}, :error, :ok])
      assert Executor.execute_with_retry(fun, retriable_errors: :all, backoff_ms: [0, 0]) == :ok
      assert calls.() == 3

      {fun, calls} = scripted([{:error, Error.grpc_error(:unavailable, "down")}, {:ok, 1}])
      assert Executor.execute_with_retry(fun, backoff_ms: [0]) == {:ok, 1}
      assert calls.() == 2
    end

    test "plain values are successes" do
      {fun, calls} = scripted([:whatever])
      assert Executor.execute_with_retry(fun) == :whatever
      assert calls.() == 1
    end

    test "raises are not retried" do
      assert_raise RuntimeError, fn -> Executor.execute_with_retry(fn -> raise "nope" end) end
    end

    test "bad options raise ArgumentError naming the option" do
      assert_raise ArgumentError, ~r/:backoff_ms/, fn ->
        Executor.execute_with_retry(fn -> :ok end, backoff_ms: 100)
      end

      assert_raise ArgumentError, ~r/:max_attempts/, fn ->
        Executor.execute_with_retry(fn -> :ok end, max_attempts: -1)
      end

      assert_raise ArgumentError, ~r/:retries/, fn ->
        Executor.execute_with_retry(fn -> :ok end, retries: 2)
      end
    end
  end

  describe "execute_with_timeout/2" do
    test "returns the result in time" do
      assert Executor.execute_with_timeout(fn -> {:ok, 1} end, timeout_ms: 1_000) == {:ok, 1}
    end

    test "times out and kills the function's process" do
      test_pid = self()

      result =
        Executor.execute_with_timeout(
          fn ->
            send(test_pid, {:running, self()})
            receive do: (:never -> :ok)
          end,
          timeout_ms: 20
        )

      assert result == {:error, :timeout}
      assert_received {:running, pid}
      refute Process.alive?(pid)
    end

    test "crashes come back as errors" do
      assert {:error, {:exit, {%RuntimeError{message: "boom"}, [_ | _]}}} =
               Executor.execute_with_timeout(fn -> raise "boom" end, timeout_ms: 1_000)

      assert {:error, {:exit, :bye}} =
               Executor.execute_with_timeout(fn -> exit(:bye) end, timeout_ms: 1_000)

      assert {:error, {:exit, {:nocatch, :t}}} =
               Executor.execute_with_timeout(fn -> throw(:t) end, timeout_ms: 1_000)
    end

    test ":timeout_ms is required and checked" do
      assert_raise ArgumentError, ~r/:timeout_ms/, fn ->
        Executor.execute_with_timeout(fn -> :ok end, [])
      end

      assert_raise ArgumentError, ~r/:timeout_ms/, fn ->
        Executor.execute_with_timeout(fn -> :ok end, timeout_ms: -5)
      end

      assert_raise ArgumentError, ~r/:timeout/, fn ->
        Executor.execute_with_timeout(fn -> :ok end, timeout: 5)
      end
    end
  end

  describe "execute_batch/2" do
    test "keeps input order regardless of completion order" do
      test_pid = self()

      funs =
        for i <- 1..5 do
          fn ->
            send(test_pid, {:started, i, self()})
            receive do: (:go -> i * 10)
          end
        end

      task = Task.async(fn -> Executor.execute_batch(funs) end)

      pids =
        for _ <- 1..5 do
          assert_receive {:started, i, pid}
          {i, pid}
        end

      # Release them in reverse order.
      for {_i, pid} <- Enum.sort(pids, :desc), do: send(pid, :go)
      assert Task.await(task) == [10, 20, 30, 40, 50]
    end

    test "respects max_concurrency" do
      test_pid = self()

      funs =
        for i <- 1..5 do
          fn ->
            send(test_pid, {:started, i, self()})
            receive do: (:go -> i)
          end
        end

      task = Task.async(fn -> Executor.execute_batch(funs, max_concurrency: 2) end)

      release = fn ->
        assert_receive {:started, i, pid}
        {i, pid}
      end

      first = release.()
      second = release.()
      refute_receive {:started, _, _}, 50

      # Each release lets exactly one more start.
      for {_, pid} <- [first, second], do: send(pid, :go)
      third = release.()
      fourth = release.()
      refute_receive {:started, _, _}, 50
      for {_, pid} <- [third, fourth], do: send(pid, :go)
      {_, last} = release.()
      send(last, :go)

      assert Task.await(task) == [1, 2, 3, 4, 5]
    end

    test "property: results match inputs in order for random batches" do
      for _ <- 1..50 do
        values = Enum.map(1..Enum.random(0..20)//1, fn _ -> :rand.uniform(1000) end)
        funs = Enum.map(values, fn v -> fn -> v * 2 end end)

        assert Executor.execute_batch(funs, max_concurrency: Enum.random(1..4)) ==
                 Enum.map(values, &(&1 * 2))
      end
    end

    test "timeouts and crashes are per function" do
      funs = [
        fn -> :fast end,
        fn -> receive do: (:never -> :ok) end,
        fn -> raise ArgumentError, "bad" end
      ]

      assert [:fast, {:error, :timeout}, {:error, {:exit, {%ArgumentError{}, _}}}] =
               Executor.execute_batch(funs, timeout_ms: 50)
    end

    test "empty batch and bad options" do
      assert Executor.execute_batch([]) == []

      assert_raise ArgumentError, ~r/:max_concurrency/, fn ->
        Executor.execute_batch([fn -> 1 end], max_concurrency: 0)
      end

      assert_raise ArgumentError, ~r/zero-arity/, fn -> Executor.execute_batch([:not_a_fun]) end
    end
  end

  describe "circuit breaker helpers" do
    test "execute_with_circuit_breaker goes through the breaker" do
      cb = start_supervised!({CircuitBreaker, failure_threshold: 1})

      assert {:error, :down} =
               Executor.execute_with_circuit_breaker(cb, fn -> {:error, :down} end)

      assert {:error, :circuit_open} =
               Executor.execute_with_circuit_breaker(cb, fn -> {:ok, 1} end)
    end

    test "execute_with_protection stops retrying once the circuit opens" do
      cb = start_supervised!({CircuitBreaker, failure_threshold: 2, reset_timeout_ms: 60_000})
      {fun, calls} = scripted([{:error, :timeout}])

      assert {:error, :circuit_open} =
               Executor.execute_with_protection(cb, fun,
                 max_attempts: 5,
                 backoff_ms: [0, 0, 0, 0]
               )

      assert calls.() == 2
      assert CircuitBreaker.state(cb) == :open
    end

    test "execute_with_protection recovers from a transient failure" do
      cb = start_supervised!({CircuitBreaker, failure_threshold: 3})
      {fun, _calls} = scripted([{:error, :timeout}, {:ok, :recovered}])
      assert {:ok, :recovered} = Executor.execute_with_protection(cb, fun, backoff_ms: [0])
      assert %{failure_count: 0, success_count: 1} = CircuitBreaker.stats(cb)
    end
  end
end
