# Streams and concurrency: a tool's chunks arrive in order as the worker
# yields them, a consumer can stop a stream early, and many concurrent calls
# spread over the pool.
#
#     mix run examples/grpc_streaming.exs

defmodule GrpcStreaming do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 30) <> inspect(value, pretty: true, width: 90))

  def run do
    :ok = Snakepit.Pool.await_init_complete()

    IO.puts("stream_progress (5 steps, 50 ms apart):")
    started = System.monotonic_time(:millisecond)

    :ok =
      Snakepit.execute_stream("stream_progress", %{steps: 5, delay_ms: 50}, fn chunk ->
        at = System.monotonic_time(:millisecond) - started
        IO.puts("  +#{String.pad_leading(Integer.to_string(at), 4)} ms  #{inspect(chunk)}")
      end)

    # Returning :halt stops the producer in the worker.
    parent = self()

    :ok =
      Snakepit.execute_stream("stream_data", %{count: 1_000}, fn chunk ->
        send(parent, {:chunk, chunk})
        if chunk["index"] >= 2, do: :halt, else: :ok
      end)

    show("chunks before :halt", count_chunks(0))

    # 40 concurrent calls of 50 ms on a pool of 2: they queue and spread.
    started = System.monotonic_time(:millisecond)

    pids =
      1..40
      |> Task.async_stream(fn _ -> Snakepit.execute("sleep", %{ms: 50}) end,
        max_concurrency: 40,
        timeout: 30_000
      )
      |> Enum.map(fn {:ok, {:ok, %{"pid" => pid}}} -> pid end)

    elapsed = System.monotonic_time(:millisecond) - started
    show("40 calls of 50 ms took", "#{elapsed} ms")
    show("calls per worker pid", Enum.frequencies(pids))

    show(
      "stats",
      Map.take(Snakepit.get_stats(), [:requests, :queued, :utilization, :wait_time_ms])
    )
  end

  defp count_chunks(n) do
    receive do
      {:chunk, _} -> count_chunks(n + 1)
    after
      0 -> n
    end
  end
end

GrpcStreaming.run()
