defmodule Snakepit.Pool.CallOptions do
  @moduledoc """
  The options of `Snakepit.execute/3` and its siblings, checked once at the
  start of a call: upstream Snakepit's spellings are accepted as aliases
  (`pool_name:` for `pool:`), and an option Snakepit does not know is named
  in a warning (once per option name and VM) instead of being ignored
  without a word. The call still runs: code written for another version
  keeps working while its author sees what has no effect.
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
    :request_id,
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

  @doc "Every option a call understands (aliases not included)."
  @spec known() :: [atom()]
  def known, do: @known

  @doc "Upstream spellings and the option each stands for."
  @spec aliases() :: %{atom() => atom()}
  def aliases, do: @aliases

  @doc """
  `opts` with aliases resolved, or a `:validation` error when `opts` is not
  a keyword list or an alias contradicts the option it stands for.

      iex> Snakepit.Pool.CallOptions.normalize(pool_name: :gpu, timeout: 5_000)
      {:ok, [pool: :gpu, timeout: 5_000]}
  """
  @spec normalize(term()) :: {:ok, keyword()} | {:error, Error.t()}
  def normalize(opts) when is_list(opts) do
    if Keyword.keyword?(opts) do
      resolve(opts, [])
    else
      {:error, Error.validation_error("options must be a keyword list, got: #{inspect(opts)}")}
    end
  end

  def normalize(opts),
    do: {:error, Error.validation_error("options must be a keyword list, got: #{inspect(opts)}")}

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
          _ -> resolve(rest, [{target, value} | acc])
        end
    end
  end

  defp resolve([{key, _} = pair | rest], acc) do
    unless key in @known, do: warn_unknown(key)
    resolve(rest, [pair | acc])
  end

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
