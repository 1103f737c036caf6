defmodule Snakepit.Telemetry.GrpcStream do
  @moduledoc """
  Folds the telemetry of Python workers into Elixir events, and changes it
  per worker at run time.

  Each worker keeps one `ElixirBridge.StreamTelemetry` stream open to the
  native core. Its events arrive here in batches and are emitted as the
  events of `Snakepit.Telemetry.python_events/0`, with `worker_id`,
  `pool_name`, `node` and the call's `correlation_id` in their metadata
  (names and keys through `Snakepit.Telemetry.Naming` and
  `Snakepit.Telemetry.SafeMetadata`: no atoms from data).

  ## Bounded

  A batch leaves the native core only after the previous one was handled
  here, and the native core holds at most 4096 events per worker beyond it;
  what does not fit is dropped and counted, as are events the worker itself
  dropped (its own buffer is bounded too) and malformed or unknown ones
  (rejected). A tool emitting without pause therefore costs the BEAM one
  batch per worker, and `stats/0` shows what was lost.

  ## Nobody listening costs nothing

  While no handler is attached to any `[:snakepit, :python | _]` event,
  workers are told not to build or send events at all. Handlers attached
  with `Snakepit.Telemetry.attach/4` or `attach_many/4` switch forwarding on
  before they return; handlers attached with `:telemetry` directly are
  noticed within a second (or at once after `refresh/0`).

  ## Control

  `toggle/2`, `update_sampling/3` and `update_filter/2` take a worker id or
  `:all` (which also applies to workers started later), and return once the
  worker applied the change (`{:error, %Snakepit.Error{}}` when it has no
  stream or did not confirm in time). Patterns are globs over dotted names
  such as `"python.call.*"`.
  """
  use GenServer

  require Logger

  alias Snakepit.{Native, Telemetry}
  alias Snakepit.Telemetry.{Control, PythonEvent}

  @poll_ms 1_000
  @ack_timeout_ms 5_000
  # The open streams, kept outside this process so that a restarted
  # GrpcStream takes them over (workers do not reconnect on their own while
  # they are told not to send anything).
  @streams_table :snakepit_telemetry_streams

  @type worker_ctx :: %{
          required(:worker_id) => String.t(),
          optional(:pool_name) => atom(),
          optional(:python_pid) => integer() | nil
        }

  # -- API ---------------------------------------------------------------------

  @doc false
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc false
  # Called by the bridge server when a worker opens its stream.
  @spec register_worker(reference(), worker_ctx()) :: :ok
  def register_worker(stream, %{worker_id: _} = ctx),
    do: GenServer.cast(__MODULE__, {:register, stream, ctx})

  @doc "Forgets the stream of `worker_id` (its events are no longer emitted)."
  @spec unregister_worker(String.t()) :: :ok
  def unregister_worker(worker_id), do: GenServer.call(__MODULE__, {:unregister, worker_id})

  @doc """
  The open streams: `%{worker_id, pool_name, opened_at, received, dropped,
  rejected}` each (`opened_at` in system milliseconds).
  """
  @spec list_streams() :: [map()]
  def list_streams, do: GenServer.call(__MODULE__, :list_streams)

  @doc """
  Totals since start: `%{streams, received, emitted, dropped, rejected,
  forwarding}` (`forwarding`: whether workers are sending events now).
  """
  @spec stats() :: map()
  def stats, do: GenServer.call(__MODULE__, :stats)

  @doc "Telemetry on or off for `worker_id` (or `:all`)."
  @spec toggle(String.t() | :all, boolean()) :: :ok | {:error, Snakepit.Error.t()}
  def toggle(worker_id, enabled) when is_boolean(enabled),
    do: control(worker_id, Control.toggle(enabled))

  @doc "Keep the share `rate` (0.0..1.0) of the events matching `patterns` (`[]`: all)."
  @spec update_sampling(String.t() | :all, number(), [String.t()]) ::
          :ok | {:error, Snakepit.Error.t()}
  def update_sampling(worker_id, rate, patterns \\ []) do
    with {:ok, message} <- build(fn -> Control.sampling(rate, patterns) end),
         do: control(worker_id, message)
  end

  @doc "Send only events matching `allow:` (when given), never those matching `deny:`."
  @spec update_filter(String.t() | :all, keyword()) :: :ok | {:error, Snakepit.Error.t()}
  def update_filter(worker_id, opts) do
    with {:ok, message} <- build(fn -> Control.filter(opts) end),
         do: control(worker_id, message)
  end

  @doc """
  Looks again whether anyone listens to Python events and tells the workers
  when that changed; returns once they confirmed (or after 3 s).
  """
  @spec refresh() :: :ok
  def refresh do
    case GenServer.whereis(__MODULE__) do
      nil ->
        :ok

      pid when pid == self() ->
        # A handler running in this process (a detach from inside one).
        send(pid, :poll)
        :ok

      pid ->
        try do
          GenServer.call(pid, :refresh, 3_000)
        catch
          :exit, _ -> :ok
        end
    end
  end

  @doc false
  # Whether workers started now should forward events from the start.
  @spec listening?() :: boolean()
  def listening?, do: Telemetry.has_handlers?([:snakepit, :python])

  defp control(worker_id, %Snakepit.Bridge.TelemetryControl{} = message)
       when is_binary(worker_id) or worker_id == :all do
    GenServer.call(__MODULE__, {:control, worker_id, message}, @ack_timeout_ms + 1_000)
  end

  defp control(worker_id, _message),
    do: invalid("worker_id must be a worker id (string) or :all, got: #{inspect(worker_id)}")

  defp build(fun) do
    {:ok, fun.()}
  rescue
    e in [ArgumentError, FunctionClauseError] -> invalid(Exception.message(e))
  end

  defp invalid(message), do: {:error, Snakepit.Error.validation_error(message)}

  # -- server ------------------------------------------------------------------

  @impl true
  def init(_opts) do
    Process.send_after(self(), :poll, @poll_ms)
    send(self(), :take_over)

    {:ok,
     %{
       streams: %{},
       by_worker: %{},
       seq: 0,
       waiters: %{},
       listening: listening?(),
       defaults: %{},
       closed: %{received: 0, dropped: 0, rejected: 0},
       emitted: 0,
       rejected_here: 0
     }}
  end

  @impl true
  def handle_cast({:register, stream, ctx}, state) do
    case Native.telemetry_attach(stream, self()) do
      :ok -> {:noreply, open_stream(state, stream, ctx)}
      :ended -> {:noreply, state}
    end
  end

  @impl true
  def handle_call({:control, target, message}, from, state) do
    case targets(state, target) do
      [] when target == :all ->
        {:reply, :ok, remember(state, message)}

      [] ->
        {:reply, invalid("no telemetry stream for worker #{inspect(target)}"), state}

      streams ->
        state = if target == :all, do: remember(state, message), else: state
        {:noreply, send_and_wait(state, streams, Control.to_native(message), from)}
    end
  end

  def handle_call(:refresh, from, state) do
    now = listening?()

    if now == state.listening do
      {:reply, :ok, state}
    else
      state = %{state | listening: now}
      {:noreply, send_and_wait(state, Map.keys(state.streams), {:forwarding, now}, from)}
    end
  end

  def handle_call({:unregister, worker_id}, _from, state),
    do: {:reply, :ok, drop_worker(state, worker_id)}

  def handle_call(:list_streams, _from, state) do
    list =
      for {_stream, s} <- state.streams,
          do: Map.take(s, [:worker_id, :pool_name, :opened_at, :received, :dropped, :rejected])

    {:reply, Enum.sort_by(list, & &1.worker_id), state}
  end

  def handle_call(:stats, _from, state) do
    live = Map.values(state.streams)
    sum = fn key -> state.closed[key] + Enum.sum(Enum.map(live, &Map.fetch!(&1, key))) end

    {:reply,
     %{
       streams: map_size(state.streams),
       received: sum.(:received),
       emitted: state.emitted,
       dropped: sum.(:dropped),
       rejected: sum.(:rejected) + state.rejected_here,
       forwarding: state.listening
     }, state}
  end

  @impl true
  def handle_info({:snakepit_telemetry, stream, entries, counts}, state) do
    state =
      case Map.fetch(state.streams, stream) do
        {:ok, s} -> handle_batch(state, stream, s, entries, counts)
        :error -> state
      end

    # Handled (or not ours any more): the next batch may leave.
    Native.telemetry_ack(stream)
    {:noreply, state}
  end

  def handle_info({:snakepit_telemetry_closed, stream}, state),
    do: {:noreply, close_stream(state, stream)}

  def handle_info({:ack_timeout, seq}, state) do
    case Map.pop(state.waiters, seq) do
      {nil, _} ->
        {:noreply, state}

      {{from, pending}, waiters} ->
        workers = Enum.map(pending, &state.streams[&1][:worker_id])

        GenServer.reply(
          from,
          {:error,
           Snakepit.Error.timeout_error(
             "worker(s) #{inspect(workers)} did not confirm the telemetry change within #{@ack_timeout_ms} ms"
           )}
        )

        {:noreply, %{state | waiters: waiters}}
    end
  end

  # Streams a previous GrpcStream had: attach to them again.
  def handle_info(:take_over, state) do
    table = Snakepit.ETSOwner.ensure_table(@streams_table)

    state =
      Enum.reduce(:ets.tab2list(table), state, fn {stream, worker_id}, acc ->
        case Native.telemetry_attach(stream, self()) do
          :ok ->
            open_stream(acc, stream, %{worker_id: worker_id})

          :ended ->
            :ets.delete(table, stream)
            acc
        end
      end)

    {:noreply, state}
  end

  def handle_info(:poll, state) do
    Process.send_after(self(), :poll, @poll_ms)
    now = listening?()

    if now == state.listening do
      {:noreply, state}
    else
      for stream <- Map.keys(state.streams),
          do: Native.telemetry_control(stream, {:forwarding, now}, 0)

      {:noreply, %{state | listening: now}}
    end
  end

  def handle_info(_other, state), do: {:noreply, state}

  # -- streams -----------------------------------------------------------------

  defp open_stream(state, stream, ctx) do
    worker_id = ctx.worker_id
    state = drop_worker(state, worker_id)

    entry = %{
      worker_id: worker_id,
      pool_name: Map.get(ctx, :pool_name),
      opened_at: System.system_time(:millisecond),
      received: 0,
      dropped: 0,
      rejected: 0
    }

    # The worker learns at once whether to send, and the settings made for
    # all workers before it started.
    Native.telemetry_control(stream, {:forwarding, state.listening}, 0)
    for {_kind, message} <- state.defaults, do: Native.telemetry_control(stream, message, 0)
    :ets.insert(Snakepit.ETSOwner.ensure_table(@streams_table), {stream, worker_id})

    %{
      state
      | streams: Map.put(state.streams, stream, entry),
        by_worker: Map.put(state.by_worker, worker_id, stream)
    }
  end

  defp drop_worker(state, worker_id) do
    case Map.fetch(state.by_worker, worker_id) do
      {:ok, stream} -> close_stream(state, stream)
      :error -> state
    end
  end

  defp close_stream(state, stream) do
    case Map.pop(state.streams, stream) do
      {nil, _} ->
        state

      {s, streams} ->
        :ets.delete(Snakepit.ETSOwner.ensure_table(@streams_table), stream)
        closed = Map.new(state.closed, fn {k, v} -> {k, v + Map.fetch!(s, k)} end)

        by_worker =
          if state.by_worker[s.worker_id] == stream,
            do: Map.delete(state.by_worker, s.worker_id),
            else: state.by_worker

        state = %{state | streams: streams, by_worker: by_worker, closed: closed}
        Enum.reduce(Map.keys(state.waiters), state, &acked(&2, &1, stream))
    end
  end

  defp targets(state, :all), do: Map.keys(state.streams)

  defp targets(state, worker_id) do
    case Map.fetch(state.by_worker, worker_id) do
      {:ok, stream} -> [stream]
      :error -> []
    end
  end

  # Settings for :all, replayed to workers that start later (one per kind).
  defp remember(state, %{control: {kind, _}} = message),
    do: %{state | defaults: Map.put(state.defaults, kind, Control.to_native(message))}

  defp send_and_wait(state, [], _message, from) do
    GenServer.reply(from, :ok)
    state
  end

  defp send_and_wait(state, streams, message, from) do
    seq = state.seq + 1
    sent = Enum.filter(streams, &(Native.telemetry_control(&1, message, seq) == :ok))

    if sent == [] do
      GenServer.reply(from, :ok)
      %{state | seq: seq}
    else
      Process.send_after(self(), {:ack_timeout, seq}, @ack_timeout_ms)
      %{state | seq: seq, waiters: Map.put(state.waiters, seq, {from, MapSet.new(sent)})}
    end
  end

  defp acked(state, seq, stream) do
    case Map.fetch(state.waiters, seq) do
      {:ok, {from, pending}} ->
        pending = MapSet.delete(pending, stream)

        if MapSet.size(pending) == 0 do
          GenServer.reply(from, :ok)
          %{state | waiters: Map.delete(state.waiters, seq)}
        else
          %{state | waiters: Map.put(state.waiters, seq, {from, pending})}
        end

      :error ->
        state
    end
  end

  # -- events ------------------------------------------------------------------

  defp handle_batch(state, stream, s, entries, counts) do
    context = %{worker_id: s.worker_id, pool_name: pool_name(s), node: node()}

    {state, received, rejected} =
      Enum.reduce(entries, {state, 0, 0}, fn
        {:ack, seq}, {st, n, bad} ->
          {acked(st, seq, stream), n, bad}

        entry, {st, n, bad} ->
          case PythonEvent.translate(entry, context) do
            {:ok, event, measurements, metadata} ->
              Telemetry.emit(event, measurements, metadata)
              {%{st | emitted: st.emitted + 1}, n + 1, bad}

            {:error, _reason} ->
              {st, n + 1, bad + 1}
          end
      end)

    s = %{
      s
      | pool_name: context.pool_name,
        received: s.received + received + counts.rejected - s.rejected,
        dropped: counts.dropped,
        rejected: counts.rejected
    }

    %{
      state
      | streams: Map.put(state.streams, stream, s),
        rejected_here: state.rejected_here + rejected
    }
  end

  # Known once the worker registered in the pool (its stream may open first).
  defp pool_name(%{pool_name: nil, worker_id: id}) do
    case Snakepit.Pool.Registry.get_worker_metadata(id) do
      {:ok, meta} -> Map.get(meta, :pool_name)
      _ -> nil
    end
  end

  defp pool_name(%{pool_name: name}), do: name
end
