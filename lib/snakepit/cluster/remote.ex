defmodule Snakepit.Cluster.Remote do
  @moduledoc false
  # What a call routed to this node runs here (through :erpc or a spawned
  # stream proxy): the local pool, with refs converted both ways.

  alias Snakepit.Cluster.Transfer

  def execute(command, args, opts) do
    command |> Snakepit.Pool.execute(Transfer.into_local(args), opts) |> Transfer.to_portable()
  end

  # Streams chunk by chunk: each chunk waits for the caller's answer
  # (:cont or :halt), so ordering and backpressure hold across nodes and a
  # :halt stops the producer. A caller that goes away halts it too.
  def stream(caller, ref, command, args, opts) do
    watch = Process.monitor(caller)

    callback = fn chunk ->
      send(caller, {ref, :chunk, Transfer.to_portable(chunk)})

      receive do
        {^ref, :cont} -> :ok
        {^ref, :halt} -> :halt
        {:DOWN, ^watch, :process, _, _} -> :halt
      end
    end

    result = Snakepit.Pool.execute_stream(command, Transfer.into_local(args), callback, opts)
    send(caller, {ref, :done, Transfer.to_portable(result)})
  end

  # get_stats/1 of this node, for get_stats(:cluster).
  def stats, do: Snakepit.Pool.get_stats()
end
