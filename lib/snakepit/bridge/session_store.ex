defmodule Snakepit.Bridge.SessionStore do
  @moduledoc """
  The sessions of this node, in a `:protected` ETS table owned by this
  process: anyone may read, only the store writes, so every update is
  atomic and a session never changes under a reader's feet.

  Sessions expire after `ttl` seconds without access (see
  `Snakepit.Bridge.Session`); a sweep every `cleanup_interval` ms deletes
  them, and reads never return an expired session.

  ## Quotas

      config :snakepit, :session_store,
        max_sessions: 10_000,
        max_programs_per_session: 100,
        max_global_programs: 1_000

  Each may be `:infinity`. Exceeding one returns
  `{:error, :session_quota_exceeded}` or
  `{:error, {:program_quota_exceeded, session_id}}` (`:global` for global
  programs). Replacing an existing program never counts against a quota.

  ## Affinity

  `Snakepit.Pool` records the worker that served a session with
  `store_worker_session/2` (creating the session when needed) and reads it
  back with `last_worker/1`, so a session keeps its worker across pool
  restarts.
  """
  use GenServer

  import Snakepit.Bridge.SessionStore.Checks

  alias Snakepit.Bridge.Session
  alias Snakepit.{Defaults, Telemetry}

  @default_table :snakepit_sessions
  @table_key {__MODULE__, :table}

  # -- client API ---------------------------------------------------------------

  @doc """
  Starts the store. Options: `:name` (default `#{inspect(__MODULE__)}`),
  `:table_name` (default `#{inspect(@default_table)}`), `:cleanup_interval`
  (ms), `:default_ttl` (s), `:max_sessions`, `:max_programs_per_session`,
  `:max_global_programs`.
  """
  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []) do
    with :ok <- check(is_list(opts) and Keyword.keyword?(opts), :opts, opts, "a keyword list"),
         do: GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Creates session `session_id` (a non-empty string; options as
  `Snakepit.Bridge.Session.new/2`: `ttl:` seconds, a non-negative integer;
  `metadata:` a map or keyword list; `created_at:` an integer).
  `{:error, :already_exists}` when it exists, `{:error, :session_quota_exceeded}`
  when the store is full, `{:error, %Snakepit.Error{category: :validation}}`
  for a bad id or option (checked in the caller, before the store sees it).

      {:ok, session} = SessionStore.create_session("session_456", ttl: 7200)
  """
  @spec create_session(String.t(), keyword()) :: {:ok, Session.t()} | {:error, term()}
  def create_session(session_id, opts \\ []), do: create_session(__MODULE__, session_id, opts)

  @spec create_session(GenServer.server(), String.t(), keyword()) ::
          {:ok, Session.t()} | {:error, term()}
  def create_session(server, session_id, opts) do
    with :ok <- check_server(server),
         :ok <- check_id(session_id),
         :ok <- check_create_opts(opts),
         do: GenServer.call(server, {:create, session_id, opts})
  end

  @doc """
  The session, with its `last_accessed` updated; `{:error, :not_found}` when
  absent or expired (also for an id that is not a string: no session has it).
  """
  @spec get_session(String.t()) :: {:ok, Session.t()} | {:error, :not_found}
  def get_session(session_id), do: get_session(__MODULE__, session_id)

  @spec get_session(GenServer.server(), String.t()) :: {:ok, Session.t()} | {:error, :not_found}
  def get_session(server, session_id) do
    if server?(server) and id?(session_id),
      do: GenServer.call(server, {:get, session_id}),
      else: {:error, :not_found}
  end

  @doc """
  Replaces the session with `update_fn.(session)`, atomically. The result
  must be a valid session with the same id, else
  `{:error, {:invalid_session, reason}}`; a function that raises, throws or
  exits gives `{:error, {:update_failed, reason}}` and changes nothing.
  `update_fn` runs inside the store: keep it short. A bad id or a
  `update_fn` that is not a function of arity 1 is a `:validation` error.
  """
  @spec update_session(String.t(), (Session.t() -> Session.t())) ::
          {:ok, Session.t()} | {:error, term()}
  def update_session(session_id, update_fn), do: update_session(__MODULE__, session_id, update_fn)

  @spec update_session(GenServer.server(), String.t(), (Session.t() -> Session.t())) ::
          {:ok, Session.t()} | {:error, term()}
  def update_session(server, session_id, update_fn) do
    with :ok <- check_server(server),
         :ok <- check_id(session_id),
         :ok <- check(is_function(update_fn, 1), :update_fn, update_fn, "a function of arity 1"),
         do: GenServer.call(server, {:update, session_id, update_fn})
  end

  @doc "Deletes the session; `:ok` also when it did not exist (or `session_id` is not a string)."
  @spec delete_session(String.t()) :: :ok
  def delete_session(session_id), do: delete_session(__MODULE__, session_id)

  @spec delete_session(GenServer.server(), String.t()) :: :ok
  def delete_session(server, session_id) do
    if server?(server) and id?(session_id),
      do: GenServer.call(server, {:delete, session_id}),
      else: :ok
  end

  @doc "Does an unexpired session `session_id` exist?"
  @spec session_exists?(String.t()) :: boolean()
  def session_exists?(session_id), do: id?(session_id) and lookup(table(), session_id) != nil

  @spec session_exists?(GenServer.server(), String.t()) :: boolean()
  def session_exists?(server, session_id),
    do: server?(server) and id?(session_id) and GenServer.call(server, {:exists, session_id})

  @doc "Ids of the unexpired sessions."
  @spec list_sessions() :: [String.t()]
  def list_sessions, do: list(table())

  @spec list_sessions(GenServer.server()) :: [String.t()]
  def list_sessions(server), do: if(server?(server), do: GenServer.call(server, :list), else: [])

  @doc "Deletes expired sessions now; returns how many."
  @spec cleanup_expired_sessions() :: non_neg_integer()
  def cleanup_expired_sessions, do: cleanup_expired_sessions(__MODULE__)

  @spec cleanup_expired_sessions(GenServer.server()) :: non_neg_integer()
  def cleanup_expired_sessions(server),
    do: if(server?(server), do: GenServer.call(server, :cleanup), else: 0)

  @doc "Counts and quotas of the store."
  @spec get_stats() :: map()
  def get_stats, do: get_stats(__MODULE__)

  @spec get_stats(GenServer.server()) :: map()
  def get_stats(server), do: if(server?(server), do: GenServer.call(server, :stats), else: %{})

  @doc """
  Records that `worker_id` served `session_id`, creating the session when
  it does not exist (and the quota allows). Asynchronous; always `:ok`. Ids
  that are not non-empty strings are dropped here, in the caller, so the
  store never sees them.
  """
  @spec store_worker_session(String.t(), String.t()) :: :ok
  def store_worker_session(session_id, worker_id) do
    if id?(session_id) and id?(worker_id),
      do: GenServer.cast(__MODULE__, {:worker, session_id, worker_id}),
      else: :ok
  end

  @doc "The worker that last served `session_id`, or nil. Reads ETS directly."
  @spec last_worker(String.t()) :: String.t() | nil
  def last_worker(session_id) do
    case id?(session_id) && lookup(table(), session_id) do
      %Session{last_worker_id: worker} -> worker
      _ -> nil
    end
  end

  @doc """
  Stores a program in a session. `{:error, :not_found}` without the
  session, `{:error, {:program_quota_exceeded, session_id}}` when it is
  full, a `:validation` error when an id is not a non-empty string.
  """
  @spec store_program(String.t(), String.t(), term()) :: :ok | {:error, term()}
  def store_program(session_id, program_id, data) do
    with :ok <- check_id(session_id),
         :ok <- check_id(program_id, :program_id),
         do: GenServer.call(__MODULE__, {:store_program, session_id, program_id, data})
  end

  @doc "A program of a session: `{:ok, data}` or `{:error, :not_found}`."
  @spec get_program(String.t(), String.t()) :: {:ok, term()} | {:error, :not_found}
  def get_program(session_id, program_id) do
    case id?(session_id) && lookup(table(), session_id) do
      %Session{} = session -> Session.get_program(session, program_id)
      _ -> {:error, :not_found}
    end
  end

  @doc "Removes a program from a session; `:ok` also when absent."
  @spec delete_program(String.t(), String.t()) :: :ok
  def delete_program(session_id, program_id) do
    if id?(session_id) and id?(program_id),
      do: GenServer.call(__MODULE__, {:delete_program, session_id, program_id}),
      else: :ok
  end

  @doc """
  Stores a program every session and worker can use.
  `{:error, {:program_quota_exceeded, :global}}` when the global quota is
  reached, a `:validation` error when `program_id` is not a non-empty string.
  """
  @spec store_global_program(String.t(), term()) :: :ok | {:error, term()}
  def store_global_program(program_id, data) do
    with :ok <- check_id(program_id, :program_id),
         do: GenServer.call(__MODULE__, {:store_global, program_id, data})
  end

  @doc "A global program: `{:ok, data}` or `{:error, :not_found}`."
  @spec get_global_program(String.t()) :: {:ok, term()} | {:error, :not_found}
  def get_global_program(program_id) do
    case :ets.lookup(globals_table(table()), program_id) do
      [{_, data}] -> {:ok, data}
      [] -> {:error, :not_found}
    end
  rescue
    ArgumentError -> {:error, :not_found}
  end

  @doc "Removes a global program; `:ok` also when absent."
  @spec delete_global_program(String.t()) :: :ok
  def delete_global_program(program_id) do
    if id?(program_id),
      do: GenServer.call(__MODULE__, {:delete_global, program_id}),
      else: :ok
  end

  # Reads of the default store go straight to its table.
  defp table, do: :persistent_term.get(@table_key, @default_table)

  defp lookup(table, session_id) do
    case :ets.lookup(table, session_id) do
      [{_, last, ttl, session}] -> if Session.now() - last > ttl, do: nil, else: session
      [] -> nil
    end
  rescue
    ArgumentError -> nil
  end

  defp list(table) do
    now = Session.now()
    # {id, last_accessed, ttl, session} with now - last <= ttl.
    :ets.select(table, [{{:"$1", :"$2", :"$3", :_}, [{:"=<", {:-, now, :"$2"}, :"$3"}], [:"$1"]}])
  rescue
    ArgumentError -> []
  end

  defp globals_table(table), do: :"#{table}_global_programs"

  # -- server -------------------------------------------------------------------

  @impl true
  def init(opts) do
    table_name = Keyword.get(opts, :table_name, @default_table)
    quotas = Map.new(Snakepit.Defaults.session_store())

    table =
      :ets.new(table_name, [:set, :protected, :named_table, read_concurrency: true])

    globals =
      :ets.new(globals_table(table_name), [:set, :protected, :named_table, read_concurrency: true])

    if Keyword.get(opts, :name, __MODULE__) == __MODULE__,
      do: :persistent_term.put(@table_key, table_name)

    option = fn key, default -> Keyword.get(opts, key, Map.get(quotas, key, default)) end

    state = %{
      table: table,
      globals: globals,
      cleanup_interval: option.(:cleanup_interval, Defaults.session_cleanup_interval()),
      default_ttl: option.(:default_ttl, Defaults.session_default_ttl()),
      max_sessions: option.(:max_sessions, Defaults.session_max_sessions()),
      max_programs: option.(:max_programs_per_session, 100),
      max_globals: option.(:max_global_programs, 1_000),
      warned: false,
      stats: %{sessions_created: 0, sessions_deleted: 0, sessions_expired: 0}
    }

    schedule_cleanup(state)
    {:ok, state}
  end

  defp schedule_cleanup(%{cleanup_interval: ms}) when is_integer(ms) and ms > 0,
    do: Process.send_after(self(), :cleanup, ms)

  defp schedule_cleanup(_), do: :ok

  @impl true
  def handle_call({:create, id, opts}, _from, state) when is_binary(id) and id != "" do
    case {check_create_opts(opts), lookup(state.table, id)} do
      {{:error, _} = error, _} ->
        {:reply, error, state}

      {:ok, %Session{}} ->
        {:reply, {:error, :already_exists}, state}

      {:ok, nil} ->
        case insert_new(state, id, opts) do
          {:ok, session, state} -> {:reply, {:ok, session}, state}
          {:error, reason} -> {:reply, {:error, reason}, state}
        end
    end
  end

  def handle_call({:get, id}, _from, state) do
    case lookup(state.table, id) do
      nil ->
        {:reply, {:error, :not_found}, state}

      session ->
        session = Session.touch(session)
        put(state, session)
        {:reply, {:ok, session}, state}
    end
  end

  def handle_call({:update, id, fun}, _from, state) when is_function(fun, 1) do
    case lookup(state.table, id) do
      nil ->
        {:reply, {:error, :not_found}, state}

      session ->
        reply =
          try do
            updated = fun.(session)

            with :ok <- Session.validate(updated),
                 :ok <- same_id(updated, id) do
              updated = Session.touch(updated)
              put(state, updated)
              {:ok, updated}
            else
              {:error, reason} -> {:error, {:invalid_session, reason}}
            end
          catch
            :error, e ->
              {:error, {:update_failed, Exception.normalize(:error, e, __STACKTRACE__)}}

            kind, reason ->
              {:error, {:update_failed, {kind, reason}}}
          end

        {:reply, reply, state}
    end
  end

  def handle_call({:delete, id}, _from, state) do
    {:reply, :ok, delete(state, id, :deleted)}
  end

  def handle_call({:exists, id}, _from, state),
    do: {:reply, lookup(state.table, id) != nil, state}

  def handle_call(:list, _from, state), do: {:reply, list(state.table), state}

  def handle_call(:cleanup, _from, state) do
    {count, state} = sweep(state)
    {:reply, count, state}
  end

  def handle_call(:stats, _from, state) do
    stats =
      Map.merge(state.stats, %{
        current_sessions: :ets.info(state.table, :size),
        max_sessions: state.max_sessions,
        max_programs_per_session: state.max_programs,
        global_programs: :ets.info(state.globals, :size),
        max_global_programs: state.max_globals,
        memory_bytes:
          (:ets.info(state.table, :memory) + :ets.info(state.globals, :memory)) *
            :erlang.system_info(:wordsize)
      })

    {:reply, stats, state}
  end

  def handle_call({:store_program, id, program_id, data}, _from, state) do
    case lookup(state.table, id) do
      nil ->
        {:reply, {:error, :not_found}, state}

      session ->
        if Map.has_key?(session.programs, program_id) or
             under?(map_size(session.programs), state.max_programs) do
          put(state, session |> Session.put_program(program_id, data) |> Session.touch())
          {:reply, :ok, state}
        else
          {:reply, {:error, {:program_quota_exceeded, id}}, state}
        end
    end
  end

  def handle_call({:delete_program, id, program_id}, _from, state) do
    case lookup(state.table, id) do
      nil -> :ok
      session -> put(state, Session.delete_program(session, program_id))
    end

    {:reply, :ok, state}
  end

  def handle_call({:store_global, program_id, data}, _from, state) do
    if :ets.member(state.globals, program_id) or
         under?(:ets.info(state.globals, :size), state.max_globals) do
      :ets.insert(state.globals, {program_id, data})
      {:reply, :ok, state}
    else
      {:reply, {:error, {:program_quota_exceeded, :global}}, state}
    end
  end

  def handle_call({:delete_global, program_id}, _from, state) do
    :ets.delete(state.globals, program_id)
    {:reply, :ok, state}
  end

  # Anything else is a sender's bug: answered, logged, the store goes on.
  def handle_call(request, _from, state) do
    malformed(request)

    {:reply, {:error, Snakepit.Error.validation_error("unknown request to the session store")},
     state}
  end

  @impl true
  def handle_cast({:worker, id, worker_id}, state)
      when is_binary(id) and id != "" and is_binary(worker_id) do
    state =
      case lookup(state.table, id) do
        nil ->
          case insert_new(state, id, []) do
            {:ok, session, state} ->
              put(state, %{session | last_worker_id: worker_id})
              state

            {:error, _quota} ->
              state
          end

        session ->
          put(state, %{Session.touch(session) | last_worker_id: worker_id})
          state
      end

    {:noreply, state}
  end

  def handle_cast(message, state) do
    malformed(message)
    {:noreply, state}
  end

  @impl true
  def handle_info(:cleanup, state) do
    {_count, state} = sweep(state)
    schedule_cleanup(state)
    {:noreply, state}
  end

  def handle_info(other, state) do
    malformed(other)
    {:noreply, state}
  end

  defp malformed(message),
    do: Snakepit.Logger.malformed(:bridge, "Snakepit.Bridge.SessionStore", message)

  defp same_id(%Session{id: id}, id), do: :ok
  defp same_id(_session, _id), do: {:error, :id_changed}

  defp under?(_count, :infinity), do: true
  defp under?(count, max), do: count < max

  defp insert_new(state, id, opts) do
    # Expired sessions still in the table do not count against the quota.
    {_swept, state} =
      if under?(:ets.info(state.table, :size), state.max_sessions),
        do: {0, state},
        else: sweep(state)

    if under?(:ets.info(state.table, :size), state.max_sessions) do
      session = Session.new(id, Keyword.put_new(opts, :ttl, state.default_ttl))
      put(state, session)
      Telemetry.emit([:snakepit, :session, :created], %{}, %{session_id: id})
      state = bump(state, :sessions_created)
      {:ok, session, warn_if_crowded(state)}
    else
      {:error, :session_quota_exceeded}
    end
  end

  defp put(state, %Session{} = session) do
    :ets.insert(state.table, {session.id, session.last_accessed, session.ttl, session})
  end

  defp delete(state, id, reason) do
    if :ets.member(state.table, id) do
      :ets.delete(state.table, id)
      Telemetry.emit([:snakepit, :session, :destroyed], %{}, %{session_id: id, reason: reason})
      bump(state, if(reason == :expired, do: :sessions_expired, else: :sessions_deleted))
    else
      state
    end
  end

  defp sweep(state) do
    now = Session.now()

    expired =
      :ets.select(state.table, [
        {{:"$1", :"$2", :"$3", :_}, [{:>, {:-, now, :"$2"}, :"$3"}], [:"$1"]}
      ])

    state = Enum.reduce(expired, state, &delete(&2, &1, :expired))
    {length(expired), %{state | warned: state.warned and crowded?(state)}}
  end

  defp crowded?(%{max_sessions: :infinity}), do: false

  defp crowded?(state),
    do: :ets.info(state.table, :size) >= state.max_sessions * Defaults.session_warning_threshold()

  defp warn_if_crowded(%{warned: true} = state), do: state

  defp warn_if_crowded(state) do
    if crowded?(state) do
      Snakepit.Logger.warning(
        :bridge,
        "session store holds #{:ets.info(state.table, :size)} of at most #{state.max_sessions} sessions"
      )

      %{state | warned: true}
    else
      state
    end
  end

  defp bump(state, key), do: %{state | stats: Map.update!(state.stats, key, &(&1 + 1))}
end
