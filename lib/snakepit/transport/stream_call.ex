defmodule Snakepit.Transport.StreamCall do
  @moduledoc """
  A streaming call to one worker, made from the caller's own process (see
  `Snakepit.GRPC.Client.execute_stream/5`): chunks arrive over the
  worker's call lane or its gRPC stream, at most `stream_window` in
  flight, and the callback runs on each in this process. The callback
  returning `:halt`, a deadline that passes, or a raising callback cancel
  the stream, so Python stops producing.
  """

  alias Snakepit.{Defaults, Error, Native, Telemetry}
  alias Snakepit.Transport.NativeCall

  @doc """
  Runs streaming `tool` on `worker`, calling `callback` with each chunk
  (see `Snakepit.GRPC.Client.execute_stream/5`). Returns the result with
  whether the producer is known to have ended (`:ended`) or may still run
  (`:abandoned`: halted, timed out, the callback raised, the transport
  failed), so its worker's slot is only reused once the call is stopped.
  """
  @spec run(map(), String.t(), map(), (map() -> term()), keyword()) ::
          {:ok | {:error, term()}, :ended | :abandoned}
  def run(worker, tool, args, callback, opts) do
    started = System.monotonic_time()

    meta = %{
      command: tool,
      worker_id: worker.id,
      transport: NativeCall.transport(worker),
      correlation_id: Keyword.get(opts, :correlation_id)
    }

    Telemetry.emit(
      [:snakepit, :grpc, :stream, :opened],
      %{system_time: System.system_time()},
      meta
    )

    messages = :counters.new(1, [])

    counted = fn chunk ->
      :counters.add(messages, 1, 1)
      Telemetry.emit([:snakepit, :grpc, :stream, :message], %{count: 1}, meta)
      callback.(chunk)
    end

    {result, ended} = stream(worker, tool, args, counted, opts)
    duration = System.monotonic_time() - started

    Telemetry.emit(
      [:snakepit, :grpc, :stream, :closed],
      %{duration: duration, message_count: :counters.get(messages, 1)},
      Map.put(meta, :reason, closed_reason(result, ended))
    )

    Telemetry.emit(
      [:snakepit, :grpc_worker, :stream, :stop],
      %{
        duration: duration,
        duration_ms: System.convert_time_unit(duration, :native, :millisecond)
      },
      %{
        command: tool,
        worker_id: worker.id,
        transport: NativeCall.transport(worker),
        correlation_id: Keyword.get(opts, :correlation_id),
        success: result == :ok,
        ended: ended
      }
    )

    {result, ended}
  end

  defp closed_reason(:ok, :ended), do: :completed
  defp closed_reason(:ok, :abandoned), do: :cancelled
  defp closed_reason(_error, _ended), do: :error

  defp stream(worker, tool, args, callback, opts) do
    ref = make_ref()
    call_opts = Map.put(NativeCall.options(opts), :window, Defaults.stream_window())

    case start_stream(worker, ref, tool, args, call_opts) do
      {:ok, stream} ->
        try do
          consume(%{
            ref: ref,
            stream: stream,
            callback: callback,
            wait: stream_wait(stream, call_opts.timeout_ms),
            stop_at: stop_at(call_opts.timeout_ms),
            tool: tool,
            worker: worker
          })
        after
          # Also when the callback raises: cancel, so Python stops producing.
          cancel_stream(stream)
        end

      {:error, {:invalid_argument, message}} ->
        {{:error, NativeCall.invalid_args(tool, message)}, :ended}

      {:error, _} = error ->
        {NativeCall.translate(error, tool, worker), :ended}
    end
  end

  defp start_stream(worker, ref, tool, args, opts) do
    NativeCall.send_encoded(args, &send_stream(worker, ref, tool, &1, opts))
  end

  defp send_stream(%{lane: lane}, ref, tool, args, opts) when lane != nil do
    with {:ok, id} <- Native.lane_execute_stream(lane, self(), ref, tool, args, opts),
         do: {:ok, {:lane, lane, id}}
  end

  defp send_stream(worker, ref, tool, args, opts) do
    Native.grpc_execute_stream(worker.channel, self(), ref, tool, args, opts)
  end

  defp cancel_stream({:lane, lane, id}), do: Native.lane_stream_cancel(lane, id)
  defp cancel_stream(stream), do: Native.stream_cancel(stream)

  defp ack_stream({:lane, lane, id}, n), do: Native.lane_stream_ack(lane, id, n)
  defp ack_stream(stream, 1), do: Native.stream_ack(stream)

  # How long a stream waits for its next message: a lane stream to its
  # deadline (nothing else keeps it), a gRPC one past it (the native core
  # ends it at the deadline).
  defp stream_wait({:lane, _, _}, 0), do: :infinity

  defp stream_wait({:lane, _, _}, timeout_ms),
    do: {:deadline, System.monotonic_time(:millisecond) + timeout_ms}

  defp stream_wait(_grpc, timeout_ms), do: NativeCall.wait_ms(timeout_ms)

  defp after_ms({:deadline, at}), do: max(at - System.monotonic_time(:millisecond), 0)
  defp after_ms(wait), do: wait

  # The stream's deadline on the monotonic ms clock (:infinity without one).
  defp stop_at(0), do: :infinity
  defp stop_at(timeout_ms), do: System.monotonic_time(:millisecond) + timeout_ms

  # One chunk (or batch) at a time, the callback in this process. The
  # deadline is checked after every callback as well as while waiting, so
  # a slow callback with chunks already waiting cannot stretch the stream
  # past it: it ends at most one callback's time after the deadline.
  defp consume(%{ref: ref, stream: stream, tool: tool, worker: worker} = s) do
    receive do
      {^ref, {:chunk, data, is_final}} ->
        case s.callback.(chunk_map(data, is_final)) do
          :halt ->
            cancel_stream(stream)
            flush(ref)
            {:ok, if(is_final, do: :ended, else: :abandoned)}

          _ ->
            if not is_final and past?(s.stop_at) do
              stream_timed_out(s)
            else
              ack_stream(stream, 1)
              consume(s)
            end
        end

      {^ref, {:chunks, chunks, tail}} ->
        case deliver(chunks, s) do
          {:halt, final?} ->
            cancel_stream(stream)
            flush(ref)
            {:ok, if(final? or tail == :done, do: :ended, else: :abandoned)}

          :ok when tail == :done ->
            {:ok, :ended}

          :ok ->
            ack_stream(stream, length(chunks))
            consume(s)

          :past_deadline ->
            stream_timed_out(s)
        end

      {^ref, :done} ->
        {:ok, :ended}

      # A tool's own error ends its stream; anything else (a timeout, a
      # transport failure) may leave the producer running.
      {^ref, {:error, {:tool_error, _, _, _, _}} = error} ->
        {NativeCall.translate(error, tool, worker), :ended}

      {^ref, {:error, _} = error} ->
        {NativeCall.translate(error, tool, worker), :abandoned}
    after
      after_ms(s.wait) ->
        {{:error, Error.timeout_error(stream_timeout(tool, s.wait), %{tool: tool})}, :abandoned}
    end
  end

  defp past?(:infinity), do: false
  defp past?(stop_at), do: System.monotonic_time(:millisecond) >= stop_at

  defp stream_timed_out(s) do
    cancel_stream(s.stream)
    flush(s.ref)

    {{:error,
      Error.timeout_error("stream #{s.tool} did not finish in time", %{
        tool: s.tool,
        worker_id: s.worker.id
      })}, :abandoned}
  end

  defp stream_timeout(tool, {:deadline, _}), do: "stream #{tool} did not finish in time"
  defp stream_timeout(tool, wait_ms), do: "stream #{tool} sent nothing for #{wait_ms} ms"

  # Runs the callback on each chunk of a batch until one says :halt, or
  # the deadline passes with more of the batch left.
  defp deliver([], _s), do: :ok

  defp deliver([{:chunk, data, is_final} | rest], s) do
    case s.callback.(chunk_map(data, is_final)) do
      :halt -> {:halt, is_final}
      _ -> if not is_final and past?(s.stop_at), do: :past_deadline, else: deliver(rest, s)
    end
  end

  defp flush(ref) do
    receive do
      {^ref, _} -> flush(ref)
    after
      0 -> :ok
    end
  end

  @doc false
  # The documented chunk shape: a JSON object gets "is_final" added; other
  # JSON goes under "data"; bytes that are not JSON under "raw_data_base64".
  def chunk_map({:json, map}, is_final) when is_map(map), do: Map.put(map, "is_final", is_final)
  def chunk_map({:json, other}, is_final), do: %{"data" => other, "is_final" => is_final}

  def chunk_map({:raw, bytes}, is_final),
    do: %{"raw_data_base64" => Base.encode64(bytes), "is_final" => is_final}

  def chunk_map(nil, is_final), do: %{"is_final" => is_final}
end
