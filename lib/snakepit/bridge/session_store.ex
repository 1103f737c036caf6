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
    GenServer.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @doc """
  Creates session `session_id` (options as `Snakepit.Bridge.Session.new/2`).
  `{:error, :already_exists}` when it exists, `{:error, :session_quota_exceeded}`
  when the store is full.

      {:ok, session} = SessionStore.create_session("session_456", ttl: 7200)
  """
  @spec create_session(String.t(), keyword()) :: {:ok, Session.t()} | {:error, term()}
  def create_session(session_id, opts \\ []), do: create_session(__MODULE__, session_id, opts)

  @spec create_session(GenServer.server(), String.t(), keyword()) ::
          {:ok, Session.t()} | {:error, term()}
  def create_session(server, session_id, opts) when is_binary(session_id) and is_list(opts),
    do: GenServer.call(server, {:create, session_id, opts})

  @doc "The session, with its `last_accessed` updated; `{:error, :not_found}` when absent or expired."
  @spec get_session(String.t()) :: {:ok, Session.t()} | {:error, :not_found}
  def get_session(session_id), do: get_session(__MODULE__, session_id)

  @spec get_session(GenServer.server(), String.t()) :: {:ok, Session.t()} | {:error, :not_found}
  def get_session(server, session_id), do: GenServer.call(server, {:get, session_id})

  @doc """
  Replaces the session with `update_fn.(session)`, atomically. The result
  must be a valid session with the same id, else
  `{:error, {:invalid_session, reason}}`; a raising function gives
  `{:error, {:update_failed, exception}}` and changes nothing.
  """
  @spec update_session(String.t(), (Session.t() -> Session.t())) ::
          {:ok, Session.t()} | {:error, term()}
  def update_session(session_id, update_fn), do: update_session(__MODULE__, session_id, update_fn)

  @spec update_session(GenServer.server(), String.t(), (Session.t() -> Session.t())) ::
          {:ok, Session.t()} | {:error, term()}
  def update_session(server, session_id, update_fn) when is_function(update_fn, 1),
    do: GenServer.call(server, {:update, session_id, update_fn})

  @doc "Deletes the session; `:ok` also when it did not exist."
  @spec delete_session(String.t()) :: :ok
  def delete_session(session_id), do: delete_session(__MODULE__, session_id)

  @spec delete_session(GenServer.server(), String.t()) :: :ok
  def delete_session(server, session_id), do: GenServer.call(server, {:delete, session_id})

  @doc "Does an unexpired session `session_id` exist?"
  @spec session_exists?(String.t()) :: boolean()
  def session_exists?(session_id), do: lookup(table(), session_id) != nil

  @spec session_exists?(GenServer.server(), String.t()) :: boolean()
  def session_exists?(server, session_id), do: GenServer.call(server, {:exists, session_id})

  @doc "Ids of the unexpired sessions."
  @spec list_sessions() :: [String.t()]
  def list_sessions, do: list(table())

  @spec list_sessions(GenServer.server()) :: [String.t()]
  def list_sessions(server), do: GenServer.call(server, :list)

  @doc "Deletes expired sessions now; returns how many."
  @spec cleanup_expired_sessions() :: non_neg_integer()
  def cleanup_expired_sessions, do: cleanup_expired_sessions(__MODULE__)

  @spec cleanup_expired_sessions(GenServer.server()) :: non_neg_integer()
  def cleanup_expired_sessions(server), do: GenServer.call(server, :cleanup)

  @doc "Counts and quotas of the store."
  @spec get_stats() :: map()
  def get_stats, do: get_stats(__MODULE__)

  @spec get_stats(GenServer.server()) :: map()
  def get_stats(server), do: GenServer.call(server, :stats)

  @doc """
  Records that `worker_id` served `session_id`, creating the session when
  it does not exist (and the quota allows). Asynchronous; always `:ok`.
  """
  @spec store_worker_session(String.t(), String.t()) :: :ok
  def store_worker_session(session_id, worker_id),
    do: GenServer.cast(__MODULE__, {:worker, session_id, worker_id})

  @doc "The worker that last served `session_id`, or nil. Reads ETS directly."
  @spec last_worker(String.t()) :: String.t() | nil
  def last_worker(session_id) do
    case lookup(table(), session_id) do
      %Session{last_worker_id: worker} -> worker
      nil -> nil
    end
  end

  @doc """
  Stores a program in a session. `{:error, :not_found}` without the
  session, `{:error, {:program_quota_exceeded, session_id}}` when it is full.
  """
  @spec store_program(String.t(), String.t(), term()) :: :ok | {:error, term()}
  def store_program(session_id, program_id, data),
    do: GenServer.call(__MODULE__, {:store_program, session_id, program_id, data})

  @doc "A program of a session: `{:ok, data}` or `{:error, :not_found}`."
  @spec get_program(String.t(), String.t()) :: {:ok, term()} | {:error, :not_found}
  def get_program(session_id, program_id) do
    case lookup(table(), session_id) do
      nil -> {:error, :not_found}
      session -> Session.get_program(session, program_id)
    end
  end

  @doc "Removes a program from a session; `:ok` also when absent."
  @spec delete_program(String.t(), String.t()) :: :ok
  def delete_program(session_id, program_id),
    do: GenServer.call(__MODULE__, {:delete_program, session_id, program_id})

  @doc """
  Stores a program every session and worker can use.
  `{:error, {:program_quota_exceeded, :global}}` when the global quota is reached.
  """
  @spec store_global_program(String.t(), term()) :: :ok | {:error, term()}
  def store_global_program(program_id, data),
    do: GenServer.call(__MODULE__, {:store_global, program_id, data})

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
  def delete_global_program(program_id),
    do: GenServer.call(__MODULE__, {:delete_global, program_id})

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
    quotas = Map.new(Application.get_env(:snakepit, :session_store, []))

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
  def handle_call({:create, id, opts}, _from, state) do
    case lookup(state.table, id) do
      %Session{} ->
        {:reply, {:error, :already_exists}, state}

      nil ->
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

  def handle_call({:update, id, fun}, _from, state) do
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
          rescue
            e -> {:error, {:update_failed, e}}
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

  @impl true
  def handle_cast({:worker, id, worker_id}, state) do
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

  @impl true
  def handle_info(:cleanup, state) do
    {_count, state} = sweep(state)
    schedule_cleanup(state)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}

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
