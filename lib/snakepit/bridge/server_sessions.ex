defmodule Snakepit.GRPC.BridgeServer.Sessions do
  @moduledoc """
  The bridge's `InitializeSession`, `GetSession` and `CleanupSession` calls,
  on top of `Snakepit.Bridge.SessionStore`: a worker's session is a store
  session (with its TTL, quotas and worker affinity) whose metadata holds
  the config the worker sent under `:config`.

  Times are reported in wall-clock milliseconds, at the store's precision
  (seconds).
  """

  alias Snakepit.Bridge.{Session, SessionStore}

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
    result =
      case SessionStore.update_session(id, &Session.put_metadata(&1, :config, metadata)) do
        {:error, :not_found} -> SessionStore.create_session(id, metadata: %{config: metadata})
        other -> other
      end

    case result do
      {:ok, session} -> {:ok, info(session)}
      {:error, :session_quota_exceeded} -> {:error, "session quota exceeded"}
      {:error, :already_exists} -> initialize(id, metadata)
      {:error, reason} -> {:error, "cannot initialize session: #{inspect(reason)}"}
    end
  end

  @doc "The session `id`, marking it accessed now."
  @spec get(String.t()) :: {:ok, info()} | :not_found
  def get(id) when is_binary(id) do
    case SessionStore.get_session(id) do
      {:ok, session} -> {:ok, info(session)}
      {:error, :not_found} -> :not_found
    end
  end

  @doc "Removes the session `id`; true when it existed."
  @spec delete(String.t()) :: boolean()
  def delete(id) when is_binary(id) do
    existed = SessionStore.session_exists?(id)
    :ok = SessionStore.delete_session(id)
    existed
  end

  defp info(%Session{} = session) do
    offset = System.time_offset(:millisecond)

    %{
      session_id: session.id,
      metadata: Session.get_metadata(session, :config, %{}),
      created_at_ms: session.created_at * 1000 + offset,
      last_accessed_ms: session.last_accessed * 1000 + offset
    }
  end
end
