defmodule Snakepit.Bridge.SessionStore.Checks do
  @moduledoc false
  # The session store's checks of its callers' arguments, run in the
  # caller's process: a bad id, server or option is the caller's
  # `:validation` error and never reaches the shared store.

  # A session (or program, or worker) id: a non-empty UTF-8 string.
  def id?(id), do: is_binary(id) and id != "" and String.valid?(id)

  def server?(server) when is_atom(server) and server != nil, do: true
  def server?(server) when is_pid(server), do: true
  def server?({:global, _}), do: true
  def server?({:via, module, _}) when is_atom(module), do: true
  def server?({name, node}) when is_atom(name) and is_atom(node), do: true
  def server?(_), do: false

  def check_server(server),
    do: check(server?(server), :server, server, "a GenServer name or pid")

  def check_id(id, what \\ :session_id), do: check(id?(id), what, id, "a non-empty UTF-8 string")

  # The options of create_session/3, as Session.new/2 takes them.
  def check_create_opts(opts) do
    if is_list(opts) and Keyword.keyword?(opts) do
      Enum.reduce_while(opts, :ok, fn {key, value}, :ok ->
        case check_create_opt(key, value) do
          :ok -> {:cont, :ok}
          error -> {:halt, error}
        end
      end)
    else
      check(false, :opts, opts, "a keyword list")
    end
  end

  defp check_create_opt(:ttl, ttl),
    do: check(is_integer(ttl) and ttl >= 0, :ttl, ttl, "a non-negative integer of seconds")

  defp check_create_opt(:metadata, meta),
    do:
      check(
        is_map(meta) or (is_list(meta) and Keyword.keyword?(meta)),
        :metadata,
        meta,
        "a map or keyword list"
      )

  defp check_create_opt(:created_at, at),
    do: check(is_integer(at), :created_at, at, "an integer (monotonic seconds)")

  defp check_create_opt(_key, _value), do: :ok

  def check(true, _what, _value, _expected), do: :ok

  def check(false, what, value, expected) do
    {:error,
     Snakepit.Error.validation_error(
       "invalid #{what}: #{inspect(value, limit: 10, printable_limit: 80)}; expected #{expected}",
       %{option: what, value: value, expected: expected}
     )}
  end
end
