defmodule Snakepit.Pool.CallSettings do
  @moduledoc """
  The settings every `Snakepit.execute/3` reads: its default budget
  (`Snakepit.Defaults.pool_request_timeout/0`) and the margins of
  `Snakepit.Defaults.rpc_timeout/1`. They take seven lookups in the
  application environment, which cost a call more than the rest of its
  own work; here they are read again at most once a second (and whenever
  Snakepit starts), so a setting changed at run time reaches calls within
  a second.
  """

  alias Snakepit.Defaults
  alias Snakepit.Pool.Deadline

  @key {__MODULE__, :settings}
  @refresh_ms 1_000

  @typedoc "The settings, as `get/0` read them."
  @opaque t :: {timeout(), non_neg_integer()}

  @doc "The settings: read once per call, passed to `total/2` and `rpc_remaining/2`."
  @spec get() :: t()
  def get do
    case :persistent_term.get(@key, nil) do
      {settings, read_at} ->
        now = Deadline.now()
        last = :atomics.get(read_at, 1)

        # One caller (the one that moves the clock) reads them again.
        if now - last >= @refresh_ms and
             :atomics.compare_exchange(read_at, 1, last, now) == :ok,
           do: store(read_at, now),
           else: settings

      nil ->
        refresh()
        elem(:persistent_term.get(@key), 0)
    end
  end

  @doc "The total budget of a call with options `opts`: its `:timeout`, else the default."
  @spec total(keyword(), t()) :: timeout()
  def total(opts, {default, _margins}) do
    case :lists.keyfind(:timeout, 1, opts) do
      {_, timeout} when timeout != nil -> timeout
      _ -> default
    end
  end

  @doc """
  What the call to Python gets (ms) of what is left until `deadline`:
  `Snakepit.Defaults.rpc_timeout/1` of it.
  """
  @spec rpc_remaining(Deadline.t(), t()) :: non_neg_integer() | :infinity
  def rpc_remaining(:infinity, _settings), do: :infinity

  def rpc_remaining(deadline, {_default, margins}),
    do: Defaults.rpc_timeout(Deadline.remaining(deadline), margins)

  @doc "Reads the settings now (at Snakepit's start, and a second after the last read)."
  @spec refresh() :: :ok
  def refresh do
    case :persistent_term.get(@key, nil) do
      nil ->
        read_at = :atomics.new(1, signed: true)
        :atomics.put(read_at, 1, Deadline.now())
        :persistent_term.put(@key, {read(), read_at})

      {_, read_at} ->
        store(read_at, Deadline.now())
    end

    :ok
  end

  # Rewritten only when a setting changed: a rewrite costs every process a scan.
  defp store(read_at, now) do
    settings = read()
    :atomics.put(read_at, 1, now)

    if elem(:persistent_term.get(@key), 0) != settings,
      do: :persistent_term.put(@key, {settings, read_at})

    settings
  end

  # {default budget, sum of the margins}
  defp read,
    do:
      {Defaults.pool_request_timeout(),
       Defaults.worker_call_margin_ms() + Defaults.pool_reply_margin_ms()}
end
