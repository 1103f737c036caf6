defmodule Snakepit.Bridge.Session do
  @moduledoc """
  One session as `Snakepit.Bridge.SessionStore` keeps it: its programs, its
  metadata, the worker that served it last (for affinity) and its TTL.

  Timestamps (`created_at`, `last_accessed`) are monotonic seconds
  (`System.monotonic_time(:second)`); `ttl` is in seconds. A session expires
  when it has not been accessed for longer than its TTL.

  All functions are pure.
  """

  @enforce_keys [:id]
  defstruct id: nil,
            created_at: 0,
            last_accessed: 0,
            last_worker_id: nil,
            metadata: %{},
            programs: %{},
            stats: %{},
            ttl: 3600

  @type t :: %__MODULE__{
          id: String.t(),
          created_at: integer(),
          last_accessed: integer(),
          last_worker_id: String.t() | nil,
          metadata: map(),
          programs: map(),
          stats: map(),
          ttl: integer()
        }

  @doc """
  A new session. Options: `:ttl` (seconds, default
  `Snakepit.Defaults.session_default_ttl/0`), `:metadata` (map),
  `:created_at` (monotonic seconds, default now).

      iex> session = Snakepit.Bridge.Session.new("s1", ttl: 60, metadata: %{user: 1})
      iex> {session.id, session.ttl, session.metadata, session.programs}
      {"s1", 60, %{user: 1}, %{}}
  """
  @spec new(String.t(), keyword()) :: t()
  def new(id, opts \\ []) when is_binary(id) do
    now = Keyword.get_lazy(opts, :created_at, &now/0)

    %__MODULE__{
      id: id,
      created_at: now,
      last_accessed: now,
      ttl: Keyword.get_lazy(opts, :ttl, &Snakepit.Defaults.session_default_ttl/0),
      metadata: Map.new(Keyword.get(opts, :metadata, %{})),
      programs: %{},
      stats: %{programs_stored: 0, programs_deleted: 0}
    }
  end

  @doc "Monotonic seconds, the clock of every session timestamp."
  @spec now() :: integer()
  def now, do: System.monotonic_time(:second)

  @doc """
  Has the session gone unused for longer than its TTL at `current_time`
  (monotonic seconds, default now)?

      iex> session = Snakepit.Bridge.Session.new("s", ttl: 10, created_at: 0)
      iex> {Snakepit.Bridge.Session.expired?(session, 10), Snakepit.Bridge.Session.expired?(session, 11)}
      {false, true}
  """
  @spec expired?(t(), integer() | nil) :: boolean()
  def expired?(%__MODULE__{} = session, current_time \\ nil) do
    (current_time || now()) - session.last_accessed > session.ttl
  end

  @doc "The session with `last_accessed` set to now."
  @spec touch(t()) :: t()
  def touch(%__MODULE__{} = session), do: %{session | last_accessed: now()}

  @doc "Stores `program_data` under `program_id`, replacing any previous one."
  @spec put_program(t(), String.t(), term()) :: t()
  def put_program(%__MODULE__{} = session, program_id, program_data) do
    %{
      session
      | programs: Map.put(session.programs, program_id, program_data),
        stats: Map.update(session.stats, :programs_stored, 1, &(&1 + 1))
    }
  end

  @doc "`{:ok, data}` for a stored program, `{:error, :not_found}` otherwise."
  @spec get_program(t(), String.t()) :: {:ok, term()} | {:error, :not_found}
  def get_program(%__MODULE__{} = session, program_id) do
    case Map.fetch(session.programs, program_id) do
      {:ok, data} -> {:ok, data}
      :error -> {:error, :not_found}
    end
  end

  @doc "The session without `program_id`."
  @spec delete_program(t(), String.t()) :: t()
  def delete_program(%__MODULE__{} = session, program_id) do
    if Map.has_key?(session.programs, program_id) do
      %{
        session
        | programs: Map.delete(session.programs, program_id),
          stats: Map.update(session.stats, :programs_deleted, 1, &(&1 + 1))
      }
    else
      session
    end
  end

  @doc "Sets metadata `key` to `value`."
  @spec put_metadata(t(), term(), term()) :: t()
  def put_metadata(%__MODULE__{} = session, key, value),
    do: %{session | metadata: Map.put(session.metadata, key, value)}

  @doc "Metadata `key`, or `default`."
  @spec get_metadata(t(), term(), term()) :: term()
  def get_metadata(%__MODULE__{} = session, key, default \\ nil),
    do: Map.get(session.metadata, key, default)

  @doc "Age, idle time, TTL and counts of the session."
  @spec get_stats(t()) :: map()
  def get_stats(%__MODULE__{} = session) do
    now = now()

    Map.merge(session.stats, %{
      age: now - session.created_at,
      time_since_access: now - session.last_accessed,
      ttl: session.ttl,
      program_count: map_size(session.programs),
      metadata_keys: map_size(session.metadata),
      last_worker_id: session.last_worker_id
    })
  end

  @doc """
  `:ok` when `session` is a well-formed session, else `{:error, reason}`.

      iex> Snakepit.Bridge.Session.validate(Snakepit.Bridge.Session.new("ok"))
      :ok
      iex> Snakepit.Bridge.Session.validate(%{Snakepit.Bridge.Session.new("x") | id: ""})
      {:error, :invalid_id}
  """
  @spec validate(term()) :: :ok | {:error, term()}
  def validate(%__MODULE__{} = s) do
    cond do
      not is_binary(s.id) or s.id == "" -> {:error, :invalid_id}
      not is_integer(s.created_at) -> {:error, :invalid_created_at}
      not is_integer(s.last_accessed) -> {:error, :invalid_last_accessed}
      not (is_integer(s.ttl) and s.ttl >= 0) -> {:error, :invalid_ttl}
      not (is_nil(s.last_worker_id) or is_binary(s.last_worker_id)) -> {:error, :invalid_worker}
      not is_map(s.metadata) -> {:error, :invalid_metadata}
      not is_map(s.programs) -> {:error, :invalid_programs}
      not is_map(s.stats) -> {:error, :invalid_stats}
      true -> :ok
    end
  end

  def validate(_other), do: {:error, :not_a_session}
end
