defmodule Snakepit.Pool.Batcher do
  @moduledoc """
  Gathers the calls of batched tools into batches, for one pool process
  (see `Snakepit.Pool.Batching`). Plumbing only: what to do is decided by
  `Snakepit.Pool.Batches`.

  Callers send it their item (`{:batch_item, pool, tool, config, item}`)
  and wait for their answer; it never sits between a worker and its reply.
  Each batch that is ready to leave gets a runner process of its own, which
  leases a slot from the pool as any caller does, takes the batch from
  here once it has one, sends it, and answers each item's caller itself.
  A runner that dies leaves no caller waiting: the batcher answers its
  items with an error.

  It is started and linked by its pool process, and stops with it.
  """
  use GenServer

  alias Snakepit.{Error, Telemetry}
  alias Snakepit.Pool.{Batches, Batching, Deadline}
  alias Snakepit.Telemetry.Correlation

  @doc false
  def start_link(pool_server), do: GenServer.start_link(__MODULE__, pool_server)

  @impl true
  def init(pool_server) do
    {:ok, %{server: pool_server, batches: Batches.new(), runners: %{}, inflight: %{}}}
  end

  # What a caller's Snakepit.Pool.Batching.call/5 sends; anything else is
  # logged and dropped.
  defguardp item?(pool, tool, size, delay, item)
            when is_atom(pool) and is_binary(tool) and is_integer(size) and size > 0 and
                   is_integer(delay) and delay >= 0 and is_tuple(item) and tuple_size(item) == 5 and
                   (is_integer(elem(item, 4)) or elem(item, 4) == :infinity)

  @impl true
  def handle_info(
        {:batch_item, pool, tool, %{max_batch_size: size, max_batch_delay_ms: delay} = config,
         item},
        state
      )
      when item?(pool, tool, size, delay, item) do
    {actions, batches} =
      Batches.add(state.batches, {pool, tool}, config, item, System.monotonic_time())

    {:noreply, perform(%{state | batches: batches}, actions)}
  end

  def handle_info({:batch_due, id}, state) do
    {actions, batches} = Batches.due(state.batches, id)
    {:noreply, perform(%{state | batches: batches}, actions)}
  end

  # A runner has its worker (or was refused one): the batch leaves.
  def handle_info({:take, id, runner}, state) when is_pid(runner) do
    case Batches.take(state.batches, id, Deadline.now()) do
      {:ok, batch, live, expired, batches} ->
        send(runner, {:batch_taken, id, live})
        {pool, tool} = batch.key
        timeout = {:error, Batching.timeout_error(tool, pool)}
        for item <- expired, do: answer(elem(item, 0), timeout)

        Telemetry.emit(
          [:snakepit, :pool, :batch],
          %{
            size: length(live),
            expired: length(expired),
            delay_us:
              System.convert_time_unit(
                System.monotonic_time() - batch.first_at,
                :native,
                :microsecond
              )
          },
          %{pool: pool, command: tool, reason: batch.reason}
        )

        tags = for item <- live, do: elem(item, 0)

        {:noreply,
         %{state | batches: batches, inflight: Map.put(state.inflight, id, {batch.key, tags})}}

      :error ->
        send(runner, {:batch_taken, id, []})
        {:noreply, state}
    end
  end

  def handle_info({:DOWN, mref, :process, _pid, reason}, state)
      when is_map_key(state.runners, mref) do
    {id, runners} = Map.pop(state.runners, mref)
    {taken, inflight} = Map.pop(state.inflight, id)
    state = %{state | runners: runners, inflight: inflight}

    case taken do
      # Its items were all answered by the runner.
      {_key, _tags} when reason == :normal ->
        {:noreply, state}

      # It died before it took its batch: the batch is answered here.
      nil ->
        case Batches.take(state.batches, id, Deadline.now()) do
          {:ok, batch, live, expired, batches} ->
            error = runner_error(batch.key, reason)
            for item <- live ++ expired, do: answer(elem(item, 0), error)
            {:noreply, %{state | batches: batches}}

          :error ->
            {:noreply, state}
        end

      # It died with items in hand: those not answered yet get an error
      # (an answered caller's alias is gone: the runtime drops the rest).
      {key, tags} ->
        error = runner_error(key, reason)
        for tag <- tags, do: answer(tag, error)
        {:noreply, state}
    end
  end

  def handle_info(message, state) do
    malformed(message)
    {:noreply, state}
  end

  # Nobody calls or casts to the batcher: answered, logged, it goes on.
  @impl true
  def handle_call(request, _from, state) do
    malformed(request)
    {:reply, {:error, Error.validation_error("unknown request to the batcher")}, state}
  end

  @impl true
  def handle_cast(message, state) do
    malformed(message)
    {:noreply, state}
  end

  defp malformed(message), do: Snakepit.Logger.malformed(:pool, "Snakepit.Pool.Batcher", message)

  defp perform(state, actions) do
    Enum.reduce(actions, state, fn
      {:arm, id, delay}, acc ->
        Process.send_after(self(), {:batch_due, id}, delay)
        acc

      {:run, id, {pool, tool}, deadline}, acc ->
        batcher = self()
        server = acc.server

        {_pid, mref} =
          spawn_monitor(fn -> run(batcher, server, id, pool, tool, deadline) end)

        %{acc | runners: Map.put(acc.runners, mref, id)}
    end)
  end

  defp answer(tag, result), do: send(tag, {tag, result})

  defp runner_error({pool, tool}, reason) do
    {:error,
     Error.worker_error("the batch was lost: its runner stopped (#{inspect(reason)})", %{
       pool: pool,
       tool: tool
     })}
  end

  # -- the runner ----------------------------------------------------------------

  # One batch: lease a slot (until the latest deadline of the items so
  # far), take the batch, send it, answer each item's caller.
  defp run(batcher, server, id, pool, tool, deadline) do
    bref = Process.monitor(batcher)

    take = fn ->
      send(batcher, {:take, id, self()})

      receive do
        {:batch_taken, ^id, items} -> items
        {:DOWN, ^bref, :process, _, _} -> exit(:normal)
      end
    end

    opts = [pool: {server, pool}, command: tool, correlation_id: Correlation.new_id()]

    for {tag, result} <- Batching.run(opts, tool, deadline, take),
        do: answer(tag, result)

    :ok
  end
end
