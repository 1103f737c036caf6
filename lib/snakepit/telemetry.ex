defmodule Snakepit.Telemetry do
  @moduledoc """
  Snakepit's telemetry events.

  When the host application has the `:telemetry` library, events go through
  `:telemetry.execute/3` and its handlers. Without it, Snakepit keeps its own
  handler table with the same shape: `attach/4`, `attach_many/4`,
  `detach/1`, handlers called as `fun.(event, measurements, metadata, config)`.
  A handler that raises is detached, as `:telemetry` does.

  The events Snakepit emits are listed by `events/0` and its groups
  (`pool_events/0`, `python_events/0`, ...). Python workers' events are
  folded in by `Snakepit.Telemetry.GrpcStream`; names and keys from Python go
  through `Snakepit.Telemetry.Naming` and `Snakepit.Telemetry.SafeMetadata`,
  so they never create atoms. `Snakepit.Telemetry.Span` wraps your own work
  in span events; `Snakepit.TelemetryMetrics` and
  `Snakepit.Telemetry.OpenTelemetry` connect to the optional libraries.
  See `docs/telemetry.md`.
  """

  require Logger

  @table :snakepit_telemetry_handlers

  @pool_events [
    [:snakepit, :pool, :worker, :spawned],
    [:snakepit, :pool, :worker, :terminated],
    [:snakepit, :pool, :worker, :startup_failed],
    [:snakepit, :pool, :saturated],
    [:snakepit, :pool, :status],
    [:snakepit, :pool, :shed],
    [:snakepit, :pool, :queue, :delay],
    [:snakepit, :pool, :queue, :timeout],
    # Pools that breathe: size steps, workers drained away, restarts.
    [:snakepit, :pool, :scale],
    [:snakepit, :pool, :worker, :retired],
    [:snakepit, :pool, :restart, :start],
    [:snakepit, :pool, :restart, :step],
    [:snakepit, :pool, :restart, :stop],
    [:snakepit, :pool, :reload],
    [:snakepit, :pool, :batch],
    [:snakepit, :request, :executed],
    [:snakepit, :request, :stopped],
    [:snakepit, :security, :unauthenticated],
    [:snakepit, :worker, :restart_scheduled],
    # Worker lifecycle, crash barrier, heartbeats and sessions (issue 4).
    [:snakepit, :worker, :initialized],
    [:snakepit, :worker, :recycled],
    [:snakepit, :worker, :health_check_failed],
    [:snakepit, :worker, :output_dropped],
    [:snakepit, :worker, :crash],
    [:snakepit, :worker, :tainted],
    [:snakepit, :worker, :restarted],
    [:snakepit, :crash_barrier, :retry]
  ]
  @heartbeat_events [
    [:snakepit, :heartbeat, :missed],
    [:snakepit, :heartbeat, :timeout]
  ]
  @session_events [
    [:snakepit, :session, :created],
    [:snakepit, :session, :destroyed]
  ]
  # The session store keeps sessions and their data only, no programs.
  @program_events []
  @script_events [
    [:snakepit, :script, :shutdown, :start],
    [:snakepit, :script, :shutdown, :stop]
  ]
  @grpc_events [
    [:snakepit, :grpc_worker, :execute, :start],
    [:snakepit, :grpc_worker, :execute, :stop],
    [:snakepit, :grpc_worker, :stream, :stop],
    # The older guide's names: the same calls and streams, and a worker's
    # channel becoming usable or going away with its process.
    [:snakepit, :grpc, :call, :start],
    [:snakepit, :grpc, :call, :stop],
    [:snakepit, :grpc, :call, :exception],
    [:snakepit, :grpc, :stream, :opened],
    [:snakepit, :grpc, :stream, :message],
    [:snakepit, :grpc, :stream, :closed],
    [:snakepit, :grpc, :connection, :established],
    [:snakepit, :grpc, :connection, :lost]
  ]
  # Folded in from workers by Snakepit.Telemetry.GrpcStream; names in
  # Snakepit.Telemetry.Naming.python_event_catalog/0.
  @python_events [
    [:snakepit, :python, :call, :start],
    [:snakepit, :python, :call, :stop],
    [:snakepit, :python, :call, :exception],
    [:snakepit, :python, :tool, :execution, :start],
    [:snakepit, :python, :tool, :execution, :stop],
    [:snakepit, :python, :tool, :execution, :exception],
    [:snakepit, :python, :memory, :sampled],
    [:snakepit, :python, :event],
    [:snakepit, :python, :span, :start],
    [:snakepit, :python, :span, :stop],
    [:snakepit, :python, :span, :exception]
  ]
  # ML error translation, the circuit breaker and retries.
  @runtime_events [
    [:snakepit, :error, :python_exception],
    [:snakepit, :error, :device],
    [:snakepit, :error, :oom],
    [:snakepit, :error, :shape_mismatch],
    [:snakepit, :circuit_breaker, :call, :allowed],
    [:snakepit, :circuit_breaker, :call, :rejected],
    [:snakepit, :circuit_breaker, :call, :success],
    [:snakepit, :circuit_breaker, :call, :failure],
    [:snakepit, :circuit_breaker, :opened],
    [:snakepit, :circuit_breaker, :half_open],
    [:snakepit, :circuit_breaker, :closed],
    [:snakepit, :retry, :attempt],
    [:snakepit, :retry, :backoff],
    [:snakepit, :retry, :success],
    [:snakepit, :retry, :exhausted],
    # Snakepit.Telemetry.GPUProfiler, while one runs.
    [:snakepit, :gpu, :memory, :sampled],
    [:snakepit, :gpu, :utilization, :sampled],
    [:snakepit, :gpu, :temperature, :sampled],
    [:snakepit, :gpu, :power, :sampled]
  ]
  @cluster_events [
    [:snakepit, :cluster, :call, :start],
    [:snakepit, :cluster, :call, :stop],
    [:snakepit, :cluster, :node, :up],
    [:snakepit, :cluster, :node, :down]
  ]
  @hardware_events [
    [:snakepit, :hardware, :cache, :hit],
    [:snakepit, :hardware, :cache, :miss],
    [:snakepit, :hardware, :detect, :start],
    [:snakepit, :hardware, :detect, :stop],
    [:snakepit, :hardware, :select, :start],
    [:snakepit, :hardware, :select, :stop]
  ]

  # {group function, its events, its doc}; events/0 is their concatenation.
  @groups [
    {:pool_events, @pool_events, "Pool and worker lifecycle events."},
    {:heartbeat_events, @heartbeat_events, "Heartbeat monitor events."},
    {:session_events, @session_events, "Session store events."},
    {:program_events, @program_events,
     "Program events of the session store: none (it keeps no programs); kept for the documented API."},
    {:script_events, @script_events, "`Snakepit.run_as_script/2` shutdown events."},
    {:grpc_events, @grpc_events, "Events of calls to workers, measured on the Elixir side."},
    {:python_events, @python_events, "Events folded back from Python workers."},
    {:runtime_events, @runtime_events,
     "ML error translation, circuit breaker, retry and GPU profiler events."},
    {:hardware_events, @hardware_events, "Hardware detection and device selection events."},
    {:cluster_events, @cluster_events,
     "Calls routed to other nodes, and nodes joining and leaving (`Snakepit.Cluster`)."}
  ]

  @doc """
  Every event Snakepit emits. `test/snakepit/telemetry_catalog_test.exs`
  checks this list against the emitting code, both ways.
  """
  @spec events() :: [[atom()]]
  def events, do: unquote(Enum.flat_map(@groups, &elem(&1, 1)))

  for {name, events, doc} <- @groups do
    @doc doc
    @spec unquote(name)() :: [[atom()]]
    def unquote(name)(), do: unquote(events)
  end

  @doc """
  Attaches the default handler (each event logged at debug level, see
  `log_event/4`) to every event. Idempotent. Note that it listens to the
  Python events too, so workers start sending them.
  """
  @spec attach_handlers() :: :ok
  def attach_handlers, do: attach_default(:all, events())

  @doc "Attaches the default handler to `heartbeat_events/0`."
  @spec attach_heartbeat_handlers() :: :ok
  def attach_heartbeat_handlers, do: attach_default(:heartbeat, @heartbeat_events)

  @doc "Attaches the default handler to `program_events/0` (there are none today)."
  @spec attach_program_handlers() :: :ok
  def attach_program_handlers, do: attach_default(:program, @program_events)

  @doc "Attaches the default handler to `session_events/0`."
  @spec attach_session_handlers() :: :ok
  def attach_session_handlers, do: attach_default(:session, @session_events)

  defp attach_default(_group, []), do: :ok

  defp attach_default(group, events) do
    case attach_many({__MODULE__, :default, group}, events, &__MODULE__.log_event/4, nil) do
      :ok -> :ok
      {:error, :already_exists} -> :ok
    end
  end

  @doc false
  # The default handler.
  def log_event(event, measurements, metadata, _config) do
    Logger.debug(fn ->
      "[telemetry] #{Enum.map_join(event, ".", &Atom.to_string/1)} #{inspect(measurements)} #{inspect(metadata)}"
    end)
  end

  @doc false
  # Decided once at application start: a host that has :telemetry gets it.
  def choose_backend do
    backend = if Code.ensure_loaded?(:telemetry), do: :telemetry, else: :builtin
    :persistent_term.put({__MODULE__, :backend}, backend)
    refresh_listened()
    backend
  end

  defp backend, do: :persistent_term.get({__MODULE__, :backend}, :builtin)

  # The events with a handler in the built-in table, as a map (`:all` under
  # `:telemetry`), kept beside the table so that `handled?/1`, asked several
  # times per call, is one lookup. Rewritten on attach and detach only.
  @listened {__MODULE__, :listened}

  defp refresh_listened do
    listened =
      cond do
        backend() == :telemetry -> :all
        :ets.whereis(@table) == :undefined -> %{}
        true -> Map.new(:ets.tab2list(@table), fn {event, _, _, _} -> {event, true} end)
      end

    if :persistent_term.get(@listened, nil) != listened do
      :persistent_term.put(@listened, listened)
      # Another attach or detach may have stored what it saw a moment
      # before this one's change: the last writer makes sure it is current.
      refresh_listened()
    end

    :ok
  end

  @doc """
  Whether emitting `event` may reach a handler: false only when Snakepit's
  own handler table is in use and nothing is attached to `event`, so a hot
  path can skip building an event nobody hears. Always true under the
  `:telemetry` library (which keeps its handlers to itself).
  """
  @spec handled?([atom()]) :: boolean()
  def handled?(event) do
    case :persistent_term.get(@listened, %{}) do
      :all -> true
      listened -> is_map_key(listened, event)
    end
  end

  @doc """
  Whether emitting any of `events` may reach a handler (`handled?/1` of
  each): one lookup for a group of events emitted at the same moment.
  """
  @spec any_handled?([[atom()]]) :: boolean()
  def any_handled?(events) do
    case :persistent_term.get(@listened, %{}) do
      :all -> true
      listened when map_size(listened) == 0 -> false
      listened -> Enum.any?(events, &is_map_key(listened, &1))
    end
  end

  @doc "Emits `event` with `measurements` and `metadata`."
  @spec emit([atom()], map(), map()) :: :ok
  def emit(event, measurements, metadata \\ %{}) do
    case backend() do
      :telemetry -> apply(:telemetry, :execute, [event, measurements, metadata])
      :builtin -> dispatch(event, measurements, metadata)
    end

    :ok
  end

  defp dispatch(event, measurements, metadata) do
    if :ets.whereis(@table) != :undefined do
      for {^event, id, fun, config} <- :ets.lookup(@table, event) do
        try do
          fun.(event, measurements, metadata, config)
        rescue
          e ->
            Logger.error(
              "telemetry handler #{inspect(id)} raised and was detached: #{Exception.message(e)}"
            )

            detach(id)
        end
      end
    end

    :ok
  end

  @doc "Attaches `fun` to `event` under the unique `id`."
  @spec attach(term(), [atom()], function(), term()) :: :ok | {:error, :already_exists}
  def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

  @doc "Attaches `fun` to each of `events` under the unique `id`."
  @spec attach_many(term(), [[atom()]], function(), term()) :: :ok | {:error, :already_exists}
  def attach_many(id, events, fun, config) when is_function(fun, 4) and is_list(events) do
    case backend() do
      :telemetry ->
        apply(:telemetry, :attach_many, [id, events, fun, config])

      :builtin ->
        table = Snakepit.ETSOwner.ensure_table(@table)

        if :ets.match_object(table, {:_, id, :_, :_}) != [] do
          {:error, :already_exists}
        else
          :ets.insert(table, Enum.map(events, &{&1, id, fun, config}))
          :ok
        end
    end
    |> tap(fn result -> if result == :ok, do: listeners_changed(events) end)
  end

  @doc "Detaches the handler `id`."
  @spec detach(term()) :: :ok | {:error, :not_found}
  def detach(id) do
    case backend() do
      :telemetry ->
        apply(:telemetry, :detach, [id])

      :builtin ->
        table = Snakepit.ETSOwner.ensure_table(@table)

        case :ets.match_object(table, {:_, id, :_, :_}) do
          [] ->
            {:error, :not_found}

          _ ->
            :ets.match_delete(table, {:_, id, :_, :_})
            :ok
        end
    end
    |> tap(fn result -> if result == :ok, do: listeners_changed(:unknown) end)
  end

  @doc """
  Whether any handler is attached to an event starting with `prefix`
  (through `:telemetry` or the built-in table).
  """
  @spec has_handlers?([atom()]) :: boolean()
  def has_handlers?(prefix) when is_list(prefix) do
    case backend() do
      :telemetry ->
        apply(:telemetry, :list_handlers, [prefix]) != []

      :builtin ->
        :ets.whereis(@table) != :undefined and
          Enum.any?(:ets.tab2list(@table), fn {event, _, _, _} -> :lists.prefix(prefix, event) end)
    end
  end

  defp listeners_changed(events) do
    refresh_listened()
    python_listeners_changed(events)
  end

  # Workers send Python events only while someone listens: tell them.
  defp python_listeners_changed(:unknown), do: Snakepit.Telemetry.GrpcStream.refresh()

  defp python_listeners_changed(events) do
    if Enum.any?(events, &:lists.prefix([:snakepit, :python], &1)),
      do: Snakepit.Telemetry.GrpcStream.refresh()
  end
end
