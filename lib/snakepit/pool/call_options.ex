defmodule Snakepit.Pool.CallOptions do
  @moduledoc """
  The options of `Snakepit.execute/3` and its siblings, checked once at the
  start of a call, in the caller's process (`normalize/1`): every value of
  a known option is checked, and a bad one is `{:error,
  %Snakepit.Error{category: :validation}}` with `details.option`,
  `details.value` and `details.expected`, before any shared process (a
  pool, the session store) sees it. Upstream Snakepit's spellings are
  accepted as aliases (`pool_name:` for `pool:`), and an option Snakepit
  does not know is named in a warning (once per option name and VM)
  instead of being ignored without a word. The call still runs: code
  written for another version keeps working while its author sees what
  has no effect.
  """

  require Logger

  alias Snakepit.Error

  @known [
    :pool,
    :pool_server,
    :timeout,
    :deadline_ms,
    :queue_timeout,
    :session_id,
    :affinity,
    :idempotent,
    :metadata,
    :binary_parameters,
    :correlation_id,
    :traceparent,
    # routing across nodes (Snakepit.Cluster)
    :node,
    :require,
    # internal: set by the crash barrier's retries, and the cluster's
    :avoid,
    :avoid_nodes
  ]
  @aliases %{pool_name: :pool}
  @affinities [:hint, :strict_queue, :strict_fail_fast]

  # The documentation of every option a caller gives: `doc/0` renders it
  # for Snakepit.execute/3, Snakepit.Pool.execute/3, Pool.Call and
  # normalize/1, so it is written once. (`:pool_server`, `:avoid` and
  # `:avoid_nodes` are internal: set by Snakepit itself.)
  @documented [
    pool:
      "the pool: its name (an atom; default the first configured pool), its process, or " <>
        "`{process, name}`; `:pool_name` is accepted as upstream Snakepit's spelling",
    timeout:
      "the total budget in ms, queueing included: a positive integer up to `max_ms/0` " <>
        "(about 24.8 days) or `:infinity` (default `Snakepit.Defaults.default_timeout/0`, " <>
        "`stream_timeout/0` for streams)",
    deadline_ms:
      "an absolute deadline on the `System.monotonic_time(:millisecond)` clock, at most " <>
        "`max_ms/0` from now, or `:infinity`; the earlier of it and `:timeout` applies",
    queue_timeout:
      "at most this many ms in the pool's queue: a non-negative integer or `:infinity`",
    session_id: "a non-empty UTF-8 string: prefer the worker that served this session before",
    affinity:
      "`:hint`, `:strict_queue` or `:strict_fail_fast`: this call's session affinity " <>
        "(default the pool's `affinity`)",
    idempotent:
      "`true` lets the crash barrier retry the call on another worker when its worker " <>
        "crashes (so does `idempotent: true` in `args`)",
    metadata: "a map of string (or atom) keys to strings, passed to the worker",
    binary_parameters:
      "a map of string (or atom) keys to binaries, passed to the tool as Python `bytes` " <>
        "beside `args`",
    correlation_id:
      "a non-empty UTF-8 string tying the call's telemetry and logs together (default: a " <>
        "fresh one)",
    traceparent: "a W3C trace context (a non-empty string) the call's spans continue",
    node:
      "where the call runs across a cluster: a node name, `:local` (default) or `:any` " <>
        "(see `Snakepit.Cluster`)",
    require: "a map of capabilities the chosen node's pool must advertise (implies `node: :any`)"
  ]

  @options_doc Enum.map_join(@documented, "\n", fn {key, text} ->
                 "  * `#{inspect(key)}` - #{text}"
               end)

  @doc """
  The options a caller gives, as a Markdown list: the one text the call
  functions' documentation shows.
  """
  @spec doc() :: String.t()
  def doc, do: @options_doc

  @doc "Every option a call understands (aliases not included)."
  @spec known() :: [atom()]
  def known, do: @known

  @doc "Upstream spellings and the option each stands for."
  @spec aliases() :: %{atom() => atom()}
  def aliases, do: @aliases

  # The longest budget a call may have, in ms (about 24.8 days): every
  # timer and `receive ... after` the call arms, slack included, stays
  # within what the runtime accepts (2^32 - 1 ms).
  @max_ms 2_147_483_647

  @doc "The longest `:timeout` / `:queue_timeout` accepted, in ms (about 24.8 days)."
  @spec max_ms() :: pos_integer()
  def max_ms, do: @max_ms

  @doc """
  `opts` with aliases resolved and every value checked, or a `:validation`
  error naming the option, the value given and what is allowed. Runs in
  the caller's process, before any shared process (a pool, the session
  store) sees the options, so one caller's bad option never reaches them.

  What each option accepts:

  #{@options_doc}

  `nil` is the same as leaving an option out (for every option but
  `:correlation_id`). Options Snakepit does not know are not checked (a
  warning names them, once).

      iex> Snakepit.Pool.CallOptions.normalize(pool_name: :gpu, timeout: 5_000)
      {:ok, [pool: :gpu, timeout: 5_000]}
      iex> {:error, error} = Snakepit.Pool.CallOptions.normalize(queue_timeout: -1)
      iex> {error.category, error.details.option, error.details.value}
      {:validation, :queue_timeout, -1}
  """
  @spec normalize(term()) :: {:ok, keyword()} | {:error, Error.t()}
  # Most calls give no options.
  def normalize([]), do: {:ok, []}

  def normalize(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      check_all(opts, opts)
    else
      not_keyword(opts)
    end
  end

  def normalize(opts), do: not_keyword(opts)

  defp not_keyword(opts) do
    {:error,
     Error.validation_error(
       "options must be a keyword list, got: #{describe(opts)}",
       %{option: :opts, value: opts, expected: "a keyword list"}
     )}
  end

  # Without an alias the options come back as given: checked, not rebuilt.
  defp check_all([], opts), do: {:ok, opts}

  defp check_all([{key, _value} | _rest], opts) when is_map_key(@aliases, key),
    do: resolve(opts, [])

  defp check_all([{key, value} | rest], opts) do
    case check(key, value) do
      :ok -> check_all(rest, opts)
      {:bad, expected} -> invalid(key, value, expected)
    end
  end

  defp resolve([], acc), do: {:ok, Enum.reverse(acc)}

  defp resolve([{key, value} | rest], acc) when is_map_key(@aliases, key) do
    target = Map.fetch!(@aliases, key)

    case Keyword.fetch(acc, target) do
      {:ok, ^value} ->
        resolve(rest, acc)

      {:ok, other} ->
        conflict(key, value, target, other)

      :error ->
        case Keyword.fetch(rest, target) do
          {:ok, other} when other != value -> conflict(key, value, target, other)
          _ -> resolve([{target, value} | rest], acc)
        end
    end
  end

  defp resolve([{key, value} = pair | rest], acc) do
    case check(key, value) do
      :ok -> resolve(rest, [pair | acc])
      {:bad, expected} -> invalid(key, value, expected)
    end
  end

  # One clause per option: :ok, or {:bad, what is allowed}.
  defp check(_key, nil), do: :ok
  defp check(:pool, pool) when is_atom(pool) or is_pid(pool), do: :ok

  defp check(:pool, {server, name}) when (is_atom(server) or is_pid(server)) and is_atom(name),
    do: :ok

  defp check(:pool, _), do: {:bad, "a pool name (atom), a pool process (pid) or {process, name}"}
  defp check(:pool_server, server) when is_atom(server) or is_pid(server), do: :ok
  defp check(:pool_server, _), do: {:bad, "a pool process (registered name or pid)"}
  defp check(:timeout, :infinity), do: :ok
  defp check(:timeout, ms) when is_integer(ms) and ms > 0 and ms <= @max_ms, do: :ok
  defp check(:timeout, _), do: {:bad, "a positive integer of ms up to #{@max_ms}, or :infinity"}
  defp check(:queue_timeout, :infinity), do: :ok
  defp check(:queue_timeout, ms) when is_integer(ms) and ms >= 0 and ms <= @max_ms, do: :ok

  defp check(:queue_timeout, _),
    do: {:bad, "a non-negative integer of ms up to #{@max_ms}, or :infinity"}

  defp check(:deadline_ms, :infinity), do: :ok

  defp check(:deadline_ms, at) when is_integer(at) do
    if at - System.monotonic_time(:millisecond) <= @max_ms,
      do: :ok,
      else: {:bad, "a deadline at most #{@max_ms} ms from now"}
  end

  defp check(:deadline_ms, _),
    do: {:bad, "an integer on the System.monotonic_time(:millisecond) clock, or :infinity"}

  defp check(:session_id, id) when is_binary(id) and id != "" do
    if String.valid?(id), do: :ok, else: {:bad, "a non-empty UTF-8 string"}
  end

  defp check(:session_id, _), do: {:bad, "a non-empty UTF-8 string"}
  defp check(:affinity, mode) when mode in @affinities, do: :ok
  defp check(:affinity, _), do: {:bad, Enum.map_join(@affinities, ", ", &inspect/1)}
  defp check(:idempotent, flag) when is_boolean(flag), do: :ok
  defp check(:idempotent, _), do: {:bad, "true or false"}
  defp check(:metadata, map) when is_map(map), do: string_map(map, &string?/1, "strings")
  defp check(:metadata, _), do: {:bad, "a map of string keys to strings"}

  defp check(:binary_parameters, map) when is_map(map),
    do: string_map(map, &is_binary/1, "binaries")

  defp check(:binary_parameters, _), do: {:bad, "a map of string keys to binaries"}

  defp check(key, id) when key in [:correlation_id, :traceparent] do
    if is_binary(id) and id != "" and String.valid?(id),
      do: :ok,
      else: {:bad, "a non-empty UTF-8 string"}
  end

  defp check(:node, node) when is_atom(node), do: :ok
  defp check(:node, _), do: {:bad, "a node name (atom), :local or :any"}
  defp check(:require, map) when is_map(map), do: :ok
  defp check(:require, _), do: {:bad, "a map of capabilities"}
  defp check(:avoid, ids) when is_list(ids), do: all(ids, &is_binary/1, "a list of worker ids")
  defp check(:avoid, _), do: {:bad, "a list of worker ids (strings)"}

  defp check(:avoid_nodes, nodes) when is_list(nodes),
    do: all(nodes, &is_atom/1, "a list of nodes")

  defp check(:avoid_nodes, _), do: {:bad, "a list of node names"}

  defp check(key, _value) do
    unless key in @known, do: warn_unknown(key)
    :ok
  end

  defp string?(value), do: is_binary(value) and String.valid?(value)

  defp string_map(map, value?, values) do
    if Enum.all?(map, fn {k, v} -> key?(k) and value?.(v) end),
      do: :ok,
      else: {:bad, "a map of string keys to #{values}"}
  end

  defp key?(key) when is_atom(key), do: true
  defp key?(key), do: string?(key)

  defp all(list, ok?, expected) do
    if proper_list?(list) and Enum.all?(list, ok?),
      do: :ok,
      else: {:bad, expected}
  end

  defp proper_list?([]), do: true
  defp proper_list?([_ | rest]), do: proper_list?(rest)
  defp proper_list?(_), do: false

  defp invalid(key, value, expected) do
    {:error,
     Error.validation_error(
       "invalid call option #{key}: #{describe(value)}; expected #{expected}",
       %{option: key, value: value, expected: expected}
     )}
  end

  defp describe(term), do: inspect(term, limit: 10, printable_limit: 80)

  defp conflict(key, value, target, other) do
    {:error,
     Error.validation_error(
       "#{key}: #{inspect(value)} and #{target}: #{inspect(other)} name different pools; " <>
         "give one (#{key}: is an alias of #{target}:)"
     )}
  end

  defp warn_unknown(key) do
    seen = {__MODULE__, :warned, key}

    unless :persistent_term.get(seen, false) do
      :persistent_term.put(seen, true)

      Logger.warning(
        "Snakepit ignores the unknown call option #{inspect(key)} (known: " <>
          "#{Enum.map_join(@known -- [:avoid, :pool_server], ", ", &inspect/1)}; " <>
          "aliases: #{inspect(Map.keys(@aliases))})"
      )
    end
  end
end
