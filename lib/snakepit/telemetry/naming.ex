defmodule Snakepit.Telemetry.Naming do
  @moduledoc """
  Event names and measurement keys, with the allowlists that keep data from
  Python workers from ever creating atoms.

  Python sends an event as its name parts after `[:snakepit, :python]`
  (strings). `from_parts/1` maps the parts of a known event to its atoms
  through a table fixed at compile time; anything else is
  `{:error, :unknown_event}`. A user's own events travel as `["event"]`
  (and spans as `["span", phase]`) with their dotted name beside, so they
  need no atoms of their own: the name stays a string in the metadata.

  The catalog of Python events, their atoms and the measurements each
  carries is `python_event_catalog/0`; the Python side keeps the same list
  in `snakepit_bridge.telemetry.stream.WORKER_EVENTS`. Change both together.
  """

  alias Snakepit.Telemetry

  @python_catalog [
    {"call.start", [:snakepit, :python, :call, :start], [:system_time]},
    {"call.stop", [:snakepit, :python, :call, :stop], [:duration]},
    {"call.exception", [:snakepit, :python, :call, :exception], [:duration]},
    {"tool.execution.start", [:snakepit, :python, :tool, :execution, :start], [:system_time]},
    {"tool.execution.stop", [:snakepit, :python, :tool, :execution, :stop], [:duration]},
    {"tool.execution.exception", [:snakepit, :python, :tool, :execution, :exception],
     [:duration]},
    {"memory.sampled", [:snakepit, :python, :memory, :sampled],
     [:rss_bytes, :heap_bytes, :allocated_blocks]},
    {"event", [:snakepit, :python, :event], []},
    {"span.start", [:snakepit, :python, :span, :start], [:system_time]},
    {"span.stop", [:snakepit, :python, :span, :stop], [:duration]},
    {"span.exception", [:snakepit, :python, :span, :exception], [:duration]}
  ]

  @by_parts Map.new(@python_catalog, fn {name, event, _} -> {String.split(name, "."), event} end)

  # Keys of measurements that become atoms; any other key stays a string.
  @measurement_keys ~w(duration system_time monotonic_time count total value bytes items size
                       rss_bytes heap_bytes allocated_blocks queue_depth latency_ms
                       dropped rejected)a
  @measurement_atoms Map.new(@measurement_keys, &{Atom.to_string(&1), &1})

  @doc """
  Builds an event name from its components.

      iex> Snakepit.Telemetry.Naming.event(:pool, :worker, :spawned)
      [:snakepit, :pool, :worker, :spawned]
  """
  @spec event(atom(), atom(), atom()) :: [atom()]
  def event(component, resource, action)
      when is_atom(component) and is_atom(resource) and is_atom(action),
      do: [:snakepit, component, resource, action]

  @doc "`[:snakepit, :pool, name]`: a pool event."
  @spec pool_event(atom()) :: [atom()]
  def pool_event(name) when is_atom(name), do: [:snakepit, :pool, name]

  @doc "`[:snakepit, :python, :call, action]`: a Python call event."
  @spec python_event(atom()) :: [atom()]
  def python_event(action) when is_atom(action), do: [:snakepit, :python, :call, action]

  @doc "`[:snakepit, :session, action]`: a session event."
  @spec session_event(atom()) :: [atom()]
  def session_event(action) when is_atom(action), do: [:snakepit, :session, action]

  @doc "`[:snakepit, :grpc_worker, resource, action]`: an event of a call to a worker."
  @spec grpc_event(atom(), atom()) :: [atom()]
  def grpc_event(resource, action) when is_atom(resource) and is_atom(action),
    do: [:snakepit, :grpc_worker, resource, action]

  @doc "The pool and worker lifecycle events (`Snakepit.Telemetry.pool_events/0`)."
  @spec pool_events() :: [[atom()]]
  def pool_events, do: Telemetry.pool_events()

  @doc "The events folded in from Python workers (`Snakepit.Telemetry.python_events/0`)."
  @spec python_events() :: [[atom()]]
  def python_events, do: Telemetry.python_events()

  @doc "The session events (`Snakepit.Telemetry.session_events/0`)."
  @spec session_events() :: [[atom()]]
  def session_events, do: Telemetry.session_events()

  @doc "The events of calls to workers (`Snakepit.Telemetry.grpc_events/0`)."
  @spec grpc_events() :: [[atom()]]
  def grpc_events, do: Telemetry.grpc_events()

  @doc """
  The Elixir event for the parts of a Python event (with or without a
  leading `"python"`), or `{:error, :unknown_event}`. Creates no atoms.

      iex> Snakepit.Telemetry.Naming.from_parts(["python", "call", "start"])
      {:ok, [:snakepit, :python, :call, :start]}
      iex> Snakepit.Telemetry.Naming.from_parts(["unknown", "event"])
      {:error, :unknown_event}
  """
  @spec from_parts([String.t()]) :: {:ok, [atom()]} | {:error, :unknown_event}
  def from_parts(["python" | parts]), do: from_parts(parts)

  def from_parts(parts) when is_list(parts) do
    case Map.fetch(@by_parts, parts) do
      {:ok, event} -> {:ok, event}
      :error -> {:error, :unknown_event}
    end
  end

  def from_parts(_other), do: {:error, :unknown_event}

  @doc """
  The atom for a known measurement key, or `{:error, :unknown_measurement_key}`.

      iex> Snakepit.Telemetry.Naming.measurement_key("duration")
      {:ok, :duration}
      iex> Snakepit.Telemetry.Naming.measurement_key("unknown_key")
      {:error, :unknown_measurement_key}
  """
  @spec measurement_key(String.t() | atom()) :: {:ok, atom()} | {:error, :unknown_measurement_key}
  def measurement_key(key) when is_atom(key) and key in @measurement_keys, do: {:ok, key}

  def measurement_key(key) when is_binary(key) do
    case Map.fetch(@measurement_atoms, key) do
      {:ok, atom} -> {:ok, atom}
      :error -> {:error, :unknown_measurement_key}
    end
  end

  def measurement_key(_key), do: {:error, :unknown_measurement_key}

  @doc "The measurement keys that become atoms."
  @spec measurement_keys() :: [atom()]
  def measurement_keys, do: @measurement_keys

  @doc """
  The Python events: `%{python: dotted name (after "python."), event:
  Elixir event, measurements: keys it carries}`.
  """
  @spec python_event_catalog() :: [%{python: String.t(), event: [atom()], measurements: [atom()]}]
  def python_event_catalog do
    for {name, event, keys} <- @python_catalog,
        do: %{python: name, event: event, measurements: keys}
  end
end
