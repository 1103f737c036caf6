defmodule Snakepit.Bridge.ToolRegistry do
  @moduledoc """
  Registry of the tools on both sides of the bridge: Elixir functions that
  Python may call (`register_elixir_tool/4`) and the tools Python workers
  offer (`register_python_tool/4`, `register_tools/2`, which workers use at
  start-up).

  ## Scopes

  Every tool belongs to a session id. The empty session id `""` is the
  global scope: a tool registered there is seen from every session, and a
  session's own tool of the same name shadows it. Python workers register
  their tools at start-up with session id `""`, so `list_tools/1` shows them
  from any session. `cleanup_session/1` removes a session's own tools only.

      # Seen from Python calls in session "s1" only:
      ToolRegistry.register_elixir_tool("s1", "lookup", &MyApp.lookup/1,
        %{description: "Find a user", exposed_to_python: true})

      # Global (the earlier releases' three-argument form):
      ToolRegistry.register_elixir_tool("calculate",
        fn params -> {:ok, params["a"] + params["b"]} end,
        %{description: "Add two numbers", exposed_to_python: true})

  ## Handlers

  A handler is a function of one argument, the parameters map (string keys,
  as decoded from JSON; binary parameters from Python arrive as binaries).
  It returns `{:ok, value}`, `{:error, reason}`, or any other value, which
  counts as `{:ok, value}`. Values go back to Python as JSON (atoms as
  strings, tuples as lists); a binary that is not UTF-8 goes back as Python
  `bytes`.

  Metadata keys understood: `:description`, `:exposed_to_python` (default
  `false`), `:parameters` (a list of names or of maps with `:name`, `:type`,
  `:required`, `:description`, `:default`); other keys are kept in
  `metadata`.

  The table is ETS (reads happen in the caller); writes go through this
  GenServer, which owns it.
  """
  use GenServer

  alias Snakepit.Bridge.InternalToolSpec
  alias Snakepit.Error

  @table :snakepit_tool_registry
  @global ""
  @known_keys [:description, :exposed_to_python, :parameters, :supports_streaming, :worker_id]

  @type session_id :: String.t()
  @type tool_name :: String.t()
  @type handler :: (map() -> term())

  # -- lifecycle -------------------------------------------------------------

  @doc "Starts the registry and its table. `opts[:name]` defaults to this module."
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, :ok, name: Keyword.get(opts, :name, __MODULE__))
  end

  @impl true
  def init(:ok) do
    table = :ets.new(@table, [:set, :protected, :named_table, read_concurrency: true])
    {:ok, table}
  end

  @impl true
  def handle_call({:insert, specs}, _from, table) when is_list(specs) do
    if Enum.all?(specs, &(is_tuple(&1) and tuple_size(&1) == 2)) do
      :ets.insert(table, specs)
      {:reply, :ok, table}
    else
      malformed({:insert, specs})
      {:reply, {:error, Snakepit.Error.validation_error("malformed tool specs")}, table}
    end
  end

  def handle_call({:cleanup, session_id}, _from, table) do
    :ets.match_delete(table, {{session_id, :_}, :_})
    {:reply, :ok, table}
  end

  # Anything else is a sender's bug: answered, logged, the registry goes on.
  def handle_call(request, _from, table) do
    malformed(request)

    {:reply, {:error, Snakepit.Error.validation_error("unknown request to the tool registry")},
     table}
  end

  @impl true
  def handle_cast(message, table) do
    malformed(message)
    {:noreply, table}
  end

  @impl true
  def handle_info(message, table) do
    malformed(message)
    {:noreply, table}
  end

  defp malformed(message),
    do: Snakepit.Logger.malformed(:bridge, "Snakepit.Bridge.ToolRegistry", message)

  # -- registration ------------------------------------------------------------

  @doc """
  Registers the Elixir function `handler` as tool `tool_name` of
  `session_id` (`""` for every session). See the module doc for handlers and
  metadata; `exposed_to_python: true` lets Python call it.

  The three-argument form `register_elixir_tool(tool_name, handler,
  metadata)` registers a global tool.
  """
  @spec register_elixir_tool(session_id(), tool_name(), handler(), map() | keyword()) ::
          :ok | {:error, Error.t()}
  def register_elixir_tool(session_id, tool_name, handler, metadata) do
    with :ok <- check_session(session_id),
         :ok <- check_name(tool_name),
         :ok <- check_handler(tool_name, handler),
         {:ok, metadata} <- check_metadata(metadata),
         {:ok, parameters} <- normalize_parameters(Map.get(metadata, :parameters, [])) do
      spec = %InternalToolSpec{
        name: tool_name,
        type: :local,
        handler: handler,
        description: to_string(Map.get(metadata, :description, "")),
        exposed_to_python: Map.get(metadata, :exposed_to_python, false) == true,
        parameters: parameters,
        metadata: Map.drop(metadata, @known_keys)
      }

      insert([{{session_id, tool_name}, spec}])
    end
  end

  @doc """
  `register_elixir_tool(tool_name, handler, metadata)` registers a global
  tool (the earlier releases' form); `register_elixir_tool(session_id,
  tool_name, handler)` one with no metadata (not exposed to Python).
  """
  @spec register_elixir_tool(tool_name(), handler(), map() | keyword()) ::
          :ok | {:error, Error.t()}
  @spec register_elixir_tool(session_id(), tool_name(), handler()) :: :ok | {:error, Error.t()}
  def register_elixir_tool(tool_name, handler, metadata) when is_function(handler),
    do: register_elixir_tool(@global, tool_name, handler, metadata)

  def register_elixir_tool(session_id, tool_name, handler),
    do: register_elixir_tool(session_id, tool_name, handler, %{})

  @doc """
  Registers tool `tool_name` offered by the Python worker `worker_id`.
  Metadata may carry `:description`, `:parameters` and
  `:supports_streaming`.
  """
  @spec register_python_tool(session_id(), tool_name(), String.t(), map() | keyword()) ::
          :ok | {:error, Error.t()}
  def register_python_tool(session_id, tool_name, worker_id, metadata \\ %{}) do
    with {:ok, spec} <- python_spec(session_id, tool_name, worker_id, metadata) do
      insert([{{session_id, tool_name}, spec}])
    end
  end

  @doc """
  Registers several Python tools at once, as a worker does at start-up.
  Each spec is a map with `:name` and optionally `:worker_id`,
  `:description`, `:parameters`, `:supports_streaming` and `:metadata`.
  Nothing is registered when any spec is invalid. Returns the names.
  """
  @spec register_tools(session_id(), [map()]) :: {:ok, [tool_name()]} | {:error, Error.t()}
  def register_tools(session_id, tool_specs) when is_list(tool_specs) do
    built =
      Enum.reduce_while(tool_specs, {:ok, []}, fn spec, {:ok, acc} ->
        with :ok <- check_spec_map(spec),
             name = fetch(spec, :name),
             worker = fetch(spec, :worker_id) || "",
             meta = spec_metadata(spec),
             {:ok, built} <- python_spec(session_id, name, worker, meta) do
          {:cont, {:ok, [{{session_id, name}, built} | acc]}}
        else
          error -> {:halt, error}
        end
      end)

    with {:ok, entries} <- built,
         entries = Enum.reverse(entries),
         :ok <- insert(entries ++ batched_entries(entries)) do
      {:ok, Enum.map(entries, fn {{_, name}, _} -> name end)}
    end
  end

  def register_tools(_session_id, other),
    do: {:error, Error.validation_error("tool specs must be a list, got: #{inspect(other)}")}

  # Each registering worker's batched tools (`@tool(batch=True)`), under a
  # key of their own: the pool reads them when the worker is ready, so
  # pools whose adapters share a tool name never mix up their settings.
  defp batched_entries(entries) do
    entries
    |> Enum.group_by(fn {_key, spec} -> spec.worker_id end, fn {{_, name}, spec} ->
      {name, Snakepit.Pool.Batching.config_of(spec.metadata)}
    end)
    |> Enum.reject(fn {worker, _tools} -> worker == "" end)
    |> Enum.map(fn {worker, tools} ->
      {{:batched, worker},
       for({name, config} <- tools, config != nil, into: %{}, do: {name, config})}
    end)
  end

  @doc """
  The batched tools the worker `worker_id` registered, by name, with their
  settings (`%{max_batch_size: n, max_batch_delay_ms: ms}`); see
  `Snakepit.Pool.Batching`.
  """
  @spec batched_tools(String.t()) :: %{tool_name() => Snakepit.Pool.Batching.config()}
  def batched_tools(worker_id) when is_binary(worker_id) do
    case table_lookup({:batched, worker_id}) do
      [{_, tools}] -> tools
      [] -> %{}
    end
  end

  defp check_spec_map(spec) when is_map(spec), do: :ok

  defp check_spec_map(spec),
    do: {:error, Error.validation_error("a tool spec must be a map, got: #{inspect(spec)}")}

  defp spec_metadata(spec) do
    extra =
      case fetch(spec, :metadata) do
        meta when is_map(meta) -> meta
        _ -> %{}
      end

    Map.merge(extra, %{
      description: fetch(spec, :description) || "",
      parameters: fetch(spec, :parameters) || [],
      supports_streaming: fetch(spec, :supports_streaming) == true
    })
  end

  defp python_spec(session_id, tool_name, worker_id, metadata) do
    with :ok <- check_session(session_id),
         :ok <- check_name(tool_name),
         :ok <- check_worker(worker_id),
         {:ok, metadata} <- check_metadata(metadata),
         {:ok, parameters} <- normalize_parameters(Map.get(metadata, :parameters, [])) do
      {:ok,
       %InternalToolSpec{
         name: tool_name,
         type: :remote,
         worker_id: worker_id,
         description: to_string(Map.get(metadata, :description, "")),
         parameters: parameters,
         supports_streaming: Map.get(metadata, :supports_streaming, false) == true,
         metadata: Map.drop(metadata, @known_keys)
       }}
    end
  end

  # -- lookups -----------------------------------------------------------------

  @doc "Every tool visible from `session_id` (its own and the global ones), sorted by name."
  @spec list_tools(session_id()) :: [InternalToolSpec.t()]
  def list_tools(session_id) when is_binary(session_id) do
    global = for {{_, name}, spec} <- scope(@global), into: %{}, do: {name, spec}

    own =
      if session_id == @global,
        do: %{},
        else: for({{_, name}, spec} <- scope(session_id), into: %{}, do: {name, spec})

    global |> Map.merge(own) |> Map.values() |> Enum.sort_by(& &1.name)
  end

  @doc "The Elixir tools Python may call from `session_id`."
  @spec list_exposed_elixir_tools(session_id()) :: [InternalToolSpec.t()]
  def list_exposed_elixir_tools(session_id) do
    session_id |> list_tools() |> Enum.filter(&(&1.type == :local and &1.exposed_to_python))
  end

  @doc "The tool `tool_name` as seen from `session_id` (its own first, then the global one)."
  @spec get_tool(session_id(), tool_name()) :: {:ok, InternalToolSpec.t()} | {:error, :not_found}
  def get_tool(session_id, tool_name) when is_binary(session_id) and is_binary(tool_name) do
    case lookup(session_id, tool_name) || lookup(@global, tool_name) do
      nil -> {:error, :not_found}
      spec -> {:ok, spec}
    end
  end

  def get_tool(_session_id, _tool_name), do: {:error, :not_found}

  @doc false
  # The tools registered in `session_id` itself (not the global ones).
  @spec session_tools(session_id()) :: [InternalToolSpec.t()]
  def session_tools(session_id), do: for({_, spec} <- scope(session_id), do: spec)

  defp lookup(session_id, name) do
    case table_lookup({session_id, name}) do
      [{_, spec}] -> spec
      [] -> nil
    end
  end

  defp scope(session_id) do
    if :ets.whereis(@table) == :undefined,
      do: [],
      else: :ets.match_object(@table, {{session_id, :_}, :_})
  end

  defp table_lookup(key) do
    if :ets.whereis(@table) == :undefined, do: [], else: :ets.lookup(@table, key)
  end

  # -- execution ---------------------------------------------------------------

  @doc """
  Runs the local (Elixir) tool `tool_name` in the calling process.

  Returns `{:ok, value}` or `{:error, reason}` as the handler gave them; a
  handler that raises gives `{:error, exception}`, one that throws
  `{:error, {:throw, value}}`, one that exits `{:error, {:exit, reason}}`.
  A missing tool is `{:error, :not_found}`; a Python tool `{:error,
  :not_local}`.
  """
  @spec execute_local_tool(session_id(), tool_name(), map()) :: {:ok, term()} | {:error, term()}
  def execute_local_tool(session_id, tool_name, params) do
    case get_tool(session_id, tool_name) do
      {:ok, %InternalToolSpec{type: :local} = spec} ->
        case invoke(spec, params) do
          {:raised, :error, exception, _stack} -> {:error, exception}
          {:raised, :throw, value, _stack} -> {:error, {:throw, value}}
          {:raised, :exit, reason, _stack} -> {:error, {:exit, reason}}
          result -> result
        end

      {:ok, _remote} ->
        {:error, :not_local}

      error ->
        error
    end
  end

  @doc false
  # Runs a local tool's handler, keeping what it raised with its stack.
  @spec invoke(InternalToolSpec.t(), map()) ::
          {:ok, term()} | {:error, term()} | {:raised, :error | :throw | :exit, term(), list()}
  def invoke(%InternalToolSpec{handler: handler}, params) do
    case handler.(params) do
      {:ok, value} -> {:ok, value}
      {:error, reason} -> {:error, reason}
      value -> {:ok, value}
    end
  rescue
    exception -> {:raised, :error, exception, __STACKTRACE__}
  catch
    kind, reason -> {:raised, kind, reason, __STACKTRACE__}
  end

  @doc "Removes every tool of `session_id` (the global ones stay unless `\"\"` is given)."
  @spec cleanup_session(session_id()) :: :ok
  def cleanup_session(session_id) when is_binary(session_id) do
    GenServer.call(__MODULE__, {:cleanup, session_id})
  end

  # No tool is ever registered under anything but a string.
  def cleanup_session(_session_id), do: :ok

  # -- validation --------------------------------------------------------------

  defp insert(entries), do: GenServer.call(__MODULE__, {:insert, entries})

  defp check_session(id) when is_binary(id), do: :ok

  defp check_session(id),
    do: {:error, Error.validation_error("session id must be a string, got: #{inspect(id)}")}

  defp check_name(name) when is_binary(name) and name != "" do
    if String.valid?(name),
      do: :ok,
      else: {:error, Error.validation_error("tool name must be UTF-8, got: #{inspect(name)}")}
  end

  defp check_name(name),
    do:
      {:error,
       Error.validation_error("tool name must be a non-empty string, got: #{inspect(name)}")}

  defp check_worker(id) when is_binary(id), do: :ok

  defp check_worker(id),
    do: {:error, Error.validation_error("worker id must be a string, got: #{inspect(id)}")}

  defp check_handler(_name, handler) when is_function(handler, 1), do: :ok

  defp check_handler(name, handler) do
    {:error,
     Error.validation_error(
       "handler of tool #{name} must be a function of one argument, got: #{inspect(handler)}",
       %{tool: name}
     )}
  end

  defp check_metadata(meta) when is_map(meta), do: {:ok, atomize_known(meta)}

  defp check_metadata(meta) when is_list(meta) do
    if Keyword.keyword?(meta),
      do: {:ok, Map.new(meta)},
      else: {:error, Error.validation_error("metadata must be a map, got: #{inspect(meta)}")}
  end

  defp check_metadata(meta),
    do: {:error, Error.validation_error("metadata must be a map, got: #{inspect(meta)}")}

  # String keys of the known fields are accepted too; nothing else is
  # turned into an atom.
  defp atomize_known(meta) do
    Enum.reduce(@known_keys, meta, fn key, acc ->
      case Map.pop(acc, Atom.to_string(key)) do
        {nil, acc} -> acc
        {value, acc} -> Map.put_new(acc, key, value)
      end
    end)
  end

  @doc false
  # Parameters as the wire and `InternalToolSpec` describe them.
  @spec normalize_parameters(term()) ::
          {:ok, [InternalToolSpec.parameter()]} | {:error, Error.t()}
  def normalize_parameters(params) when is_list(params) do
    Enum.reduce_while(params, {:ok, []}, fn param, {:ok, acc} ->
      case normalize_parameter(param) do
        {:ok, p} -> {:cont, {:ok, [p | acc]}}
        error -> {:halt, error}
      end
    end)
    |> case do
      {:ok, list} -> {:ok, Enum.reverse(list)}
      error -> error
    end
  end

  def normalize_parameters(other),
    do: {:error, Error.validation_error("parameters must be a list, got: #{inspect(other)}")}

  defp normalize_parameter(name) when is_binary(name) or is_atom(name),
    do: normalize_parameter(%{name: name})

  defp normalize_parameter(param) when is_list(param) do
    if Keyword.keyword?(param),
      do: normalize_parameter(Map.new(param)),
      else: bad_parameter(param)
  end

  defp normalize_parameter(param) when is_map(param) do
    case fetch(param, :name) do
      name when (is_binary(name) and name != "") or (is_atom(name) and not is_nil(name)) ->
        base = %{
          name: to_string(name),
          type: param |> fetch(:type) |> type_text(),
          required: fetch(param, :required) == true,
          description: to_string(fetch(param, :description) || "")
        }

        case fetch_default(param) do
          {:ok, default} -> {:ok, Map.put(base, :default, default)}
          :error -> {:ok, base}
        end

      _ ->
        bad_parameter(param)
    end
  end

  defp normalize_parameter(param), do: bad_parameter(param)

  defp bad_parameter(param),
    do:
      {:error,
       Error.validation_error(
         "a parameter must be a name or a map with :name, got: #{inspect(param)}"
       )}

  defp type_text(nil), do: ""
  defp type_text(type) when is_binary(type), do: type
  defp type_text(type) when is_atom(type), do: Atom.to_string(type)
  defp type_text(type), do: inspect(type)

  defp fetch_default(param) do
    case Map.fetch(param, :default) do
      {:ok, _} = found -> found
      :error -> Map.fetch(param, "default")
    end
  end

  defp fetch(map, key) when is_map(map) do
    case Map.fetch(map, key) do
      {:ok, value} -> value
      :error -> Map.get(map, Atom.to_string(key))
    end
  end
end
