# The least a pool process can be, for bench/call_transport.exs to measure
# what Snakepit's own pool code costs beyond the architecture: a process
# that leases lanes to callers one at a time (a FIFO of waiters), monitors
# each caller, times out queued requests as Snakepit's pool does, and takes
# lanes back at check-in. Callers monitor it while they wait, as
# GenServer.call does. Not part of Snakepit: no sessions, capacity other
# than 1, crashes or statistics.
#
#     pool = Bench.MinimalPool.start([lane_a, lane_b])
#     Bench.MinimalPool.calls(pool, 1_000)   # in each of several callers
#     Bench.MinimalPool.stop(pool)

defmodule Bench.MinimalPool do
  @queue_timeout_ms 30_000

  def start(lanes), do: spawn_link(fn -> serve(lanes, :queue.new(), %{}) end)

  def stop(pool), do: send(pool, :stop)

  @doc "Makes `n` calls of `add` from the calling process, each on a leased lane."
  def calls(_pool, 0), do: :ok

  def calls(pool, n) do
    ref = Process.monitor(pool, alias: :demonitor)
    send(pool, {:checkout, self(), ref})

    lane =
      receive do
        {^ref, lane} -> lane
      after
        @queue_timeout_ms + 1_000 -> exit(:no_lane)
      end

    Process.demonitor(ref, [:flush])
    call = make_ref()
    {:ok, _} = Snakepit.Native.lane_execute(lane, self(), call, "add", %{a: 1, b: 2}, %{})

    receive do
      {^call, {:ok, _}} -> :ok
    end

    send(pool, {:checkin, ref, lane})
    calls(pool, n - 1)
  end

  # `held`: caller ref => its monitor, or {its monitor, queue timer} while it waits.
  defp serve(free, waiting, held) do
    receive do
      {:checkout, pid, ref} ->
        mon = Process.monitor(pid)

        case free do
          [lane | rest] ->
            send(ref, {ref, lane})
            serve(rest, waiting, Map.put(held, ref, mon))

          [] ->
            timer = Process.send_after(self(), {:queue_timeout, ref}, @queue_timeout_ms)
            serve(free, :queue.in(ref, waiting), Map.put(held, ref, {mon, timer}))
        end

      {:checkin, ref, lane} ->
        {mon, held} = Map.pop(held, ref)
        Process.demonitor(mon, [:flush])

        case :queue.out(waiting) do
          {{:value, next}, rest} ->
            {next_mon, timer} = held[next]
            :erlang.cancel_timer(timer, async: true, info: false)
            send(next, {next, lane})
            serve(free, rest, Map.put(held, next, next_mon))

          {:empty, _} ->
            serve([lane | free], waiting, held)
        end

      :stop ->
        :ok
    end
  end
end
