defmodule Snakepit.Transport.LaneReader do
  @moduledoc """
  Reads one worker's call lane.

  The lane's socket is connected here, as a `gen_tcp` port in active mode
  with `{:packet, 4}` framing, and handed to the native core
  (`Snakepit.Native.lane_attach/1`), which greets the worker and writes
  every call through a descriptor of its own. This process only reads:
  each message the port delivers goes to `Snakepit.Native.lane_deliver/2`,
  which decodes it and sends `{ref, result}` to the caller that waits for
  it. The result is built on this process's heap and copied out; when it
  held a zero-copy region or a large binary the heap is collected at once,
  so nothing the caller let go of is kept alive here.

  Why a port: ERTS polls the sockets of busy ports from its schedulers, so
  a worker's reply wakes the one scheduler that runs this process, which
  delivers it. A socket read by a thread of the native core woke two
  threads per reply (that thread, then a scheduler); on this kind of
  machine each wake-up costs about as much as a whole bare request/reply.

  The reader is linked to its `Snakepit.GRPCWorker` and ends with it,
  closing the lane. When the worker's end closes the lane (its process
  died) or sends what is not a lane message, waiting callers get
  `{:error, {:unavailable, reason}}` and the reader ends normally; the
  worker is then replaced.
  """

  alias Snakepit.{Defaults, Native}

  # Messages of this size and more are decoded on a dirty scheduler.
  @large_message 128 * 1024
  @connect_timeout_ms 5_000

  @doc """
  Connects to the lane at `path` and starts reading it, linked to the
  caller: `{:ok, reader, lane}`, or `{:error, message}`.
  """
  @spec start_link(String.t()) :: {:ok, pid(), reference()} | {:error, String.t()}
  def start_link(path) do
    :proc_lib.start_link(__MODULE__, :init, [self(), path], @connect_timeout_ms * 2)
  end

  @doc false
  def init(parent, path) do
    # Its worker's exit, whatever the reason, must close the lane here:
    # callers waiting on it would otherwise hear nothing.
    Process.flag(:trap_exit, true)

    options = [
      :local,
      :binary,
      packet: 4,
      # The largest message either side accepts, with room for a batch of
      # stream chunks that the worker closes once it passes 64 KiB.
      packet_size: Defaults.max_message_bytes() + 128 * 1024,
      # Passive until the native core holds its own descriptor: an active
      # port could close its socket on an early end of input, and the
      # number handed over could then name another socket.
      active: false
    ]

    with {:ok, port} <- connect(path, options),
         {:ok, lane} <- attach(port),
         :ok <- :inet.setopts(port, active: true) do
      :proc_lib.init_ack(parent, {:ok, self(), lane})
      loop(port, lane, parent)
    else
      {:error, message} when is_binary(message) ->
        :proc_lib.init_ack(parent, {:error, message})

      {:error, reason} ->
        :proc_lib.init_ack(parent, {:error, "cannot read the lane: #{inspect(reason)}"})
    end
  end

  defp connect(path, options) do
    case :gen_tcp.connect({:local, path}, 0, options, @connect_timeout_ms) do
      {:ok, port} -> {:ok, port}
      {:error, reason} -> {:error, "cannot connect to #{path}: #{:inet.format_error(reason)}"}
    end
  end

  defp attach(port) do
    attached =
      case :inet.getfd(port) do
        {:ok, fd} -> native(Native.lane_attach(fd), nil)
        {:error, reason} -> {:error, "cannot take over the lane socket: #{inspect(reason)}"}
      end

    # Not attached, the socket is still this process's to close.
    if match?({:error, _}, attached), do: :gen_tcp.close(port)
    attached
  end

  defp loop(port, lane, parent) do
    receive do
      {:tcp, ^port, message} ->
        case deliver(lane, message) do
          :ok ->
            loop(port, lane, parent)

          # What the message left on this heap holds a zero-copy region or
          # a large binary: release it now, not at some later collection.
          :collect ->
            :erlang.garbage_collect()
            loop(port, lane, parent)

          {:error, _} = error ->
            :gen_tcp.close(port)
            {:error, why} = native(error, "the worker sent a malformed lane message")
            Native.lane_close(lane, why)
        end

      {:tcp_closed, ^port} ->
        Native.lane_close(lane, "the worker closed its lane")

      {:tcp_error, ^port, reason} ->
        :gen_tcp.close(port)
        Native.lane_close(lane, "the lane failed: #{:inet.format_error(reason)}")

      {:EXIT, ^parent, _reason} ->
        :gen_tcp.close(port)
        Native.lane_close(lane, "the worker stopped")

      # Nothing else is for this process; nothing may pile up here.
      _other ->
        loop(port, lane, parent)
    end
  end

  # A native failure as the sentence this module passes on.
  defp native({:error, reason}, context),
    do: {:error, Snakepit.Error.Native.to_error(reason, context).message}

  defp native(ok, _context), do: ok

  defp deliver(lane, message) when byte_size(message) < @large_message,
    do: Native.lane_deliver(lane, message)

  defp deliver(lane, message), do: Native.lane_deliver_large(lane, message)
end
