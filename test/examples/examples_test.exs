defmodule Snakepit.ExamplesTest do
  # Every script in examples/ runs against a real pool of Python workers, as
  # `mix run examples/NAME.exs` would, and prints what it is about: each
  # check below reads the values it prints, not only its labels (those are
  # printed whatever the calls return). (telemetry_basic.exs has its own,
  # closer test.)
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureIO

  alias Snakepit.Test.AppPool

  @dir Path.expand("../../examples", __DIR__)

  @examples ~w(quickstart grpc_basic grpc_sessions grpc_streaming bidirectional_tools_demo
               threaded_profile_demo pools_and_sessions hardware_detection crash_recovery
               zero_copy distributed_pools)

  test "every example is listed here" do
    scripts = for f <- File.ls!(@dir), Path.extname(f) == ".exs", do: Path.rootname(f)
    assert Enum.sort(scripts) == Enum.sort(["telemetry_basic" | @examples])
  end

  for example <- @examples do
    test "examples/#{example}.exs runs and shows what it is about" do
      :ok = AppPool.start!(pool_size: 2)
      output = capture_io(fn -> Code.eval_file(Path.join(@dir, unquote(example) <> ".exs")) end)
      check(unquote(example), output)
    end
  end

  defp check("quickstart", out) do
    shows(out, ~s("status" => "pong"))
    shows(out, ~s(add                     {:ok, %{"result" => 42}}))
    # Three session calls, one worker.
    shows(out, ~r/session worker pids\s+\[(\d+), \1, \1\]/)

    shows(
      out,
      ~s(chunk %{"data" => "item_3", "index" => 3, "is_final" => false, "progress" => 100.0})
    )

    shows(out, ~s(kind: "unknown_tool"))

    assert %{"requests" => "8", "workers" => "2", "errors" => "1", "busy" => "0"} =
             fields(out, "stats")
  end

  defp check("grpc_basic", out) do
    shows(out, ~s("status" => "pong"))
    shows(out, ~s("text" => "héllo"))
    shows(out, ~s(add                   {:ok, %{"result" => 42}}))
    shows(out, ~r/sleep past timeout\s+\{:timeout,\s+"\[timeout\] sleep did not finish in time/)
    shows(out, ~r/unknown tool\s+\{:validation,\s+"\[validation\] unknown tool 'no_such_tool'/)
    shows(out, ~s({Snakepit.Error.ValueError, "ValueError", "bad input"}))
  end

  defp check("grpc_sessions", out) do
    # Each user's calls stick to one worker, and not the same one.
    [_, alice] = Regex.run(~r/alice's calls ran in worker pids\s+\[(\d+)\]/, out)
    [_, bob] = Regex.run(~r/bob's calls ran in worker pids\s+\[(\d+)\]/, out)
    assert alice != bob
    shows(out, ~r/alice's program\s+\{:ok, %\{weights: \[1, 2, 3\]\}\}/)
    shows(out, ~r/bob cannot see it\s+\{:error, :not_found\}/)
    shows(out, ~r/after delete\s+\{:error, :not_found\}/)
  end

  defp check("grpc_streaming", out) do
    # Five chunks in order, the last one final.
    steps = for [_, n] <- Regex.scan(~r/"step" => (\d)/, out), do: String.to_integer(n)
    assert steps == [1, 2, 3, 4, 5]
    shows(out, ~r/"is_final" => true, "progress" => 100.0, "status" => "complete"/)
    shows(out, ~r/chunks before :halt\s+3\n/)
    # 40 calls spread over the pool's two workers.
    [_, a, b] = Regex.run(~r/calls per worker pid\s+%\{\d+ => (\d+), \d+ => (\d+)\}/, out)
    assert String.to_integer(a) + String.to_integer(b) == 40
  end

  defp check("bidirectional_tools_demo", out) do
    shows(out, ~s(["format_report", "hash"]))
    sha = Base.encode16(:crypto.hash(:sha256, "snakepit"), case: :lower)
    shows(out, ~s("sha256" => "#{sha}"))
    shows(out, ~s("result" => "fruit: apple, pear"))
    shows(out, ~r/another session cannot\s+".*unknown Elixir tool 'format_report'/)
  end

  defp check("threaded_profile_demo", out) do
    # Process profile: one thread in each of two processes; thread
    # profile: eight threads in one process.
    assert %{"threads" => "1", "os_processes" => "2"} =
             fields(out, "default: 8 calls of 100 ms on 2 worker(s)")

    assert %{"threads" => "8", "os_processes" => "1"} =
             fields(out, "threads: 8 calls of 100 ms on 1 worker(s)")

    assert %{"requests" => "8", "workers" => "1"} = fields(out, "thread pool stats")
  end

  defp check("pools_and_sessions", out) do
    shows(out, ~s(default: ["default_worker_1", "default_worker_2"]))
    shows(out, ~s(strict: ["strict_worker_1", "strict_worker_2"]))
    # :hint moves to the other worker; :strict_queue waits for its own.
    [_, a, b] = Regex.run(~r/:hint while its worker is busy\s+\{(\d+), "->", (\d+)\}/, out)
    assert a != b
    shows(out, ~r/:strict_queue waits for its worker\s+\{(\d+), "->", \1\}/)
    shows(out, ~r/:strict_fail_fast while busy\s+\{:error, :pool, :worker_busy\}/)
    shows(out, ~r/queue full\s+\{:error, :pool, :pool_saturated\}/)
    shows(out, ~r/deadline while queued\s+\{:error, :pool, :overloaded\}/)
    # Recycled: at least one worker that was not there at the start.
    [_, recycled] = Regex.run(~r/strict workers after recycling\s+(\[.*\])/, out)
    assert recycled != ~s(["strict_worker_1", "strict_worker_2"])

    assert %{"pool_saturated" => "1", "shed" => "1", "errors" => "0"} =
             fields(out, "stats :default")
  end

  defp check("hardware_detection", out) do
    # What it prints is what the library detects here.
    info = Snakepit.Hardware.detect()
    shows(out, "platform:      #{info.platform}")
    shows(out, "accelerator:   #{info.accelerator}")
    shows(out, "cores/threads: #{info.cpu.cores} cores, #{info.cpu.threads} threads")
    shows(out, "select(:cpu) -> {:ok, :cpu}")
    fallback = inspect(Snakepit.Hardware.select_with_fallback([:cuda, :mps, :cpu]))
    shows(out, "select_with_fallback([:cuda, :mps, :cpu]) -> #{fallback}")
    [_, identity] = Regex.run(~r/== Identity for lock files ==\n(.*)\n/, out)
    assert JSON.decode!(identity) == JSON.decode!(JSON.encode!(Snakepit.Hardware.identity()))
    {:ok, {major, minor, micro}} = Snakepit.PythonVersion.detect()
    shows(out, "python:              #{major}.#{minor}.#{micro}")
    shows(out, "recommended profile: #{Snakepit.PythonVersion.recommend_profile()}")
  end

  defp check("crash_recovery", out) do
    shows(out, "backoff per attempt:  [100, 200, 400, 800, 1000, 1000]")
    shows(out, "retry {:error, :timeout}?   true")
    shows(out, "retry {:error, :bad_input}? false")
    shows(out, ~r/result: \{:ok, "model loaded"\} after 3 calls/)
    shows(out, "non-retriable: {:error, :invalid_argument} after 1 call")
    shows(out, "call 3: {:error, :unavailable} -> state open")
    shows(out, "call 4: {:error, :circuit_open} (rejected without calling)")
    shows(out, "state now: half_open")
    shows(out, "probe call: {:ok, :recovered} -> state closed")
    shows(out, "result: {:error, :circuit_open}; the service was called 2 times, not 5")
    shows(out, "crash of worker_2 ({:exit_status, 137}) -> healthy? true")
    shows(out, "crash of worker_1 (:oom_killed) -> healthy? false")
    shows(out, "slow call:     {:error, :timeout}")
    shows(out, "[slept: 40, slept: 10, slept: 30, slept: 20]")
    shows(out, "Snakepit.Error.OutOfMemory: device {:cuda, 0}, requested 2147483648 B")

    shows(
      out,
      "Snakepit.Error.ShapeMismatch: matmul: expected [100, 10], got [200, 10] (dimension 0)"
    )

    shows(out, "Snakepit.Error.DeviceMismatch: expected {:cuda, 0}, got :cpu")
    shows(out, "Snakepit.Error.KeyError: KeyError: 'labels'")
  end

  defp check("zero_copy", out) do
    shows(out, ~s("dtype" => "float32"))
    shows(out, ~s("shape" => [1000, 1000]))
    # The sum of i / 1e6 for i in 1..1e6, in float32.
    [_, sum] = Regex.run(~r/"sum" => ([\d.e+]+)/, out)
    assert_in_delta String.to_float(sum), 500_000.5, 1.0
    shows(out, ~r/returned\s+#Snakepit.ZeroCopyRef<\[kind: :dlpack, owner: :python/)
    shows(out, ~s("num_rows" => 1000))
    shows(out, ~s("sums" => %{"id" => 499500, "value" => 249750.0}))
    shows(out, "shared regions left after close/1: 0")
  end

  defp check("distributed_pools", out) do
    # Three nodes with one free worker each.
    [_, pools] = Regex.run(~r/pools in the cluster\s+(\[.*?\])\n/s, out)
    assert length(Regex.scan(~r/\bfree: 1\b/, pools)) == 3
    assert length(Regex.scan(~r/\bcapacity: 1\b/, pools)) == 3

    [_, here] = Regex.run(~r/get_pid here\s+\{:ok, %\{"pid" => (\d+)\}\}/, out)
    [_, west] = Regex.run(~r/get_pid on \S+\s+\{:ok, %\{"pid" => (\d+)\}\}/, out)
    [_, gpu] = Regex.run(~r/require gpu: true\s+\{:ok, %\{"pid" => (\d+)\}\}/, out)
    assert Enum.uniq([here, west, gpu]) == [here, west, gpu]
    # :any spread the six calls over the three workers.
    [_, ran] = Regex.run(~r/6 calls with node: :any ran in pids (%\{.*\})/, out)
    counts = for [_, pid, n] <- Regex.scan(~r/(\d+) => (\d+)/, ran), into: %{}, do: {pid, n}
    assert Enum.sort(Map.keys(counts)) == Enum.sort([here, west, gpu])
    assert counts |> Map.values() |> Enum.map(&String.to_integer/1) |> Enum.sum() == 6
    shows(out, ~r/stream from \S+\s+\[0, 1, 2\]/)
    assert %{"requests" => "10", "workers" => "3"} = fields(out, "cluster stats")
  end

  # The atom-keyed map printed after `label`, as %{"key" => "value"} for its
  # top-level keys whose values are plain terms (small maps print their keys
  # in no fixed order).
  defp fields(out, label) do
    [_, rest] = String.split(out, label <> " ", parts: 2)
    "%{" <> body = String.trim_leading(rest)
    top = top_level(body, 0, "")

    for [_, key, value] <- Regex.scan(~r/(?:^|,)\s*(\w+): ([^,%\[{]+?)\s*(?=,|$)/, top),
        into: %{},
        do: {key, value}
  end

  # The map's text up to its closing brace, nested maps and lists blanked.
  defp top_level("}" <> _, 0, acc), do: acc

  defp top_level(<<c, rest::binary>>, depth, acc) when c in ~c"{[",
    do: top_level(rest, depth + 1, acc)

  defp top_level(<<c, rest::binary>>, depth, acc) when c in ~c"}]",
    do: top_level(rest, depth - 1, acc)

  defp top_level(<<c, rest::binary>>, 0, acc), do: top_level(rest, 0, acc <> <<c>>)
  defp top_level(<<_, rest::binary>>, depth, acc), do: top_level(rest, depth, acc)

  defp shows(out, %Regex{} = pattern),
    do: assert(out =~ pattern, "the example did not print #{inspect(pattern)}:\n#{out}")

  defp shows(out, text),
    do: assert(out =~ text, "the example did not print #{inspect(text)}:\n#{out}")
end
