defmodule Snakepit.GRPC.BridgeServer.Sessions do
  @moduledoc """
  The small session table behind the bridge's `InitializeSession`,
  `GetSession` and `CleanupSession` calls: session id, the config the worker
  sent, and creation / last-access times.

  It exists because `Snakepit.Bridge.SessionStore` (sessions with TTLs,
  quotas and programs) is not part of this code base yet; once it is, these
  three functions should delegate to it.
  """

  @table :snakepit_bridge_sessions

  @type info :: %{
          session_id: String.t(),
          metadata: term(),
          created_at_ms: integer(),
          last_accessed_ms: integer()
        }

  @doc "Creates (or re-initializes, keeping its creation time) the session `id` with `metadata`."
  @spec initialize(String.t(), term()) :: {:ok, info()} | {:error, String.t()}
  def initialize("", _metadata), do: {:error, "session_id is required"}

  def initialize(id, metadata) when is_binary(id) do
    table = Snakepit.ETSOwner.ensure_table(@table)
    now = System.system_time(:millisecond)

    created =
      case :ets.lookup(table, id) do
        [{^id, info}] -> info.created_at_ms
        [] -> now
      end

    info = %{session_id: id, metadata: metadata, created_at_ms: created, last_accessed_ms: now}
    :ets.insert(table, {id, info})
    {:ok, info}
  end

  @doc "The session `id`, marking it accessed now."
  @spec get(String.t()) :: {:ok, info()} | :not_found
  def get(id) when is_binary(id) do
    table = Snakepit.ETSOwner.ensure_table(@table)

    case :ets.lookup(table, id) do
      [{^id, info}] ->
        info = %{info | last_accessed_ms: System.system_time(:millisecond)}
        :ets.insert(table, {id, info})
        {:ok, info}

      [] ->
        :not_found
    end
  end

  @doc "Removes the session `id`; true when it existed."
  @spec delete(String.t()) :: boolean()
  def delete(id) when is_binary(id) do
    table = Snakepit.ETSOwner.ensure_table(@table)
    existed = :ets.member(table, id)
    :ets.delete(table, id)
    existed
  end
end
