# Circuit breaker, retries, health monitoring and the executor helpers.
#
#     mix run examples/crash_recovery.exs
#
# The "service" here is a plain Elixir function that fails in a scripted,
# deterministic way, standing in for a Python worker, so the example needs
# no Python. Every line printed is what the library actually returned.

alias Snakepit.{CircuitBreaker, Executor, HealthMonitor, RetryPolicy}
alias Snakepit.Error.Parser

defmodule CrashRecoveryDemo do
  # A service that returns the given results in order, then repeats the last.
  def scripted(results) do
    calls = :counters.new(1, [])
    results = List.to_tuple(results)

    call = fn ->
      :counters.add(calls, 1, 1)
      n = :counters.get(calls, 1)
      elem(results, min(n, tuple_size(results)) - 1)
    end

    {call, fn -> :counters.get(calls, 1) end}
  end

  def section(title), do: IO.puts("\n== #{title} ==")
end

alias CrashRecoveryDemo, as: Demo

Demo.section("Retry policy")
policy = RetryPolicy.new(max_attempts: 6, backoff_ms: [100, 200], max_backoff_ms: 1_000)

IO.puts(
  "backoff per attempt:  #{inspect(Enum.map(1..6, &RetryPolicy.backoff_for_attempt(policy, &1)))}"
)

jittered = %{policy | jitter: true}

IO.puts(
  "with 25% jitter:      #{inspect(Enum.map(1..6, &RetryPolicy.backoff_for_attempt(jittered, &1)))}"
)

IO.puts("retry {:error, :timeout}?   #{RetryPolicy.retry_for_error?(policy, {:error, :timeout})}")

IO.puts(
  "retry {:error, :bad_input}? #{RetryPolicy.retry_for_error?(policy, {:error, :bad_input})}"
)

Demo.section("execute_with_retry: two timeouts, then success")
{service, calls} = Demo.scripted([{:error, :timeout}, {:error, :timeout}, {:ok, "model loaded"}])

{micros, result} =
  :timer.tc(fn ->
    Executor.execute_with_retry(service, max_attempts: 3, backoff_ms: [50, 100])
  end)

IO.puts("result: #{inspect(result)} after #{calls.()} calls in ~#{div(micros, 1000)} ms")

{service, calls} = Demo.scripted([{:error, :invalid_argument}])

IO.puts(
  "non-retriable: #{inspect(Executor.execute_with_retry(service, backoff_ms: [50]))} after #{calls.()} call"
)

Demo.section("Circuit breaker")
{:ok, cb} = CircuitBreaker.start_link(failure_threshold: 3, reset_timeout_ms: 200)
{failing, _} = Demo.scripted([{:error, :unavailable}])

for i <- 1..3 do
  result = CircuitBreaker.call(cb, failing)
  IO.puts("call #{i}: #{inspect(result)} -> state #{CircuitBreaker.state(cb)}")
end

IO.puts(
  "call 4: #{inspect(CircuitBreaker.call(cb, fn -> {:ok, :never_runs} end))} (rejected without calling)"
)

IO.puts("waiting for the reset timeout (200 ms)...")
Process.sleep(250)
IO.puts("state now: #{CircuitBreaker.state(cb)}")

IO.puts(
  "probe call: #{inspect(CircuitBreaker.call(cb, fn -> {:ok, :recovered} end))} -> state #{CircuitBreaker.state(cb)}"
)

IO.puts(
  "stats: #{inspect(Map.take(CircuitBreaker.stats(cb), [:state, :failure_count, :success_count, :total_calls, :rejected_calls]))}"
)

Demo.section("execute_with_protection: retries stop when the circuit opens")
{:ok, cb2} = CircuitBreaker.start_link(failure_threshold: 2, reset_timeout_ms: 60_000)
{down, calls} = Demo.scripted([{:error, :timeout}])

result =
  Executor.execute_with_protection(cb2, down, max_attempts: 5, backoff_ms: [10, 10, 10, 10])

IO.puts("result: #{inspect(result)}; the service was called #{calls.()} times, not 5")

Demo.section("Health monitor")
{:ok, hm} = HealthMonitor.start_link(pool: :default, max_crashes: 3, crash_window_ms: 60_000)

for {worker, reason} <- [
      {"worker_1", :segfault},
      {"worker_2", {:exit_status, 137}},
      {"worker_1", :oom_killed}
    ] do
  :ok = HealthMonitor.record_crash(hm, worker, %{reason: reason})
  IO.puts("crash of #{worker} (#{inspect(reason)}) -> healthy? #{HealthMonitor.healthy?(hm)}")
end

IO.puts("stats: #{inspect(Map.drop(HealthMonitor.stats(hm), [:workers]))}")
health = HealthMonitor.worker_health(hm, "worker_1")
# Crash times are monotonic milliseconds, comparable with System.monotonic_time(:millisecond).
ago = System.monotonic_time(:millisecond) - health.last_crash_time
IO.puts("worker_1: #{inspect(Map.delete(health, :last_crash_time))}, last crash #{ago} ms ago")

Demo.section("Timeouts, crashes and batches")

IO.puts(
  "slow call:     #{inspect(Executor.execute_with_timeout(fn -> Process.sleep(1_000) end, timeout_ms: 50))}"
)

{:error, {:exit, {exception, _stack}}} =
  Executor.execute_with_timeout(fn -> raise ArgumentError, "bad tensor" end, timeout_ms: 1_000)

IO.puts("crashing call: {:error, {:exit, {#{inspect(exception)}, stacktrace}}}")

batch =
  for ms <- [40, 10, 30, 20] do
    fn ->
      Process.sleep(ms)
      {:slept, ms}
    end
  end

IO.puts(
  "batch (max_concurrency 2, order kept): #{inspect(Executor.execute_batch(batch, max_concurrency: 2))}"
)

Demo.section("Structured errors from Python messages")

for {type, message} <- [
      {"torch.OutOfMemoryError",
       "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.06 GiB is free."},
      {"RuntimeError", "mat1 and mat2 shapes cannot be multiplied (32x100 and 200x10)"},
      {"RuntimeError",
       "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"},
      {"KeyError", "'labels'"}
    ] do
  {:ok, error} = Parser.parse(%{"type" => type, "message" => message})

  summary =
    case error do
      %Snakepit.Error.OutOfMemory{} = e ->
        "device #{inspect(e.device)}, requested #{e.requested_bytes} B, free #{e.available_bytes} B; first hint: #{hd(e.suggestions)}"

      %Snakepit.Error.ShapeMismatch{} = e ->
        "#{e.operation}: expected #{inspect(e.expected, charlists: :as_lists)}, " <>
          "got #{inspect(e.got, charlists: :as_lists)} (dimension #{e.dimension})"

      %Snakepit.Error.DeviceMismatch{} = e ->
        "expected #{inspect(e.expected)}, got #{inspect(e.got)}"

      # Any other Python exception: the struct of its class, as calls return it.
      %{python_type: type} = e ->
        "#{type}: #{e.message}"
    end

  IO.puts("#{inspect(error.__struct__)}: #{summary}")
end
