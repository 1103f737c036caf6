defmodule Snakepit.ZeroCopy.Directory do
  @moduledoc """
  The private directory (mode 0700, on `/dev/shm`) that holds this
  application start's shared-memory regions, and the `zero_copy`
  configuration:

      config :snakepit,
        zero_copy: [
          enabled: true,          # false: refs hold their bytes and copy them
          max_bytes: :infinity,   # largest region (bytes)
          dir: nil                # base directory; nil: /dev/shm (else the tmp dir)
        ]

  Opened at application start (after removing the directories of VMs that
  were killed before they could clean up), removed at stop. Workers find
  it in `SNAKEPIT_ZERO_COPY_DIR`.
  """

  require Logger

  @key {__MODULE__, :dir}
  @defaults [enabled: true, max_bytes: :infinity, dir: nil]

  @doc "The `zero_copy` configuration with defaults, checked."
  @spec config() :: {:ok, keyword()} | {:error, String.t()}
  def config do
    given = Application.get_env(:snakepit, :zero_copy, [])

    with {:ok, given} <- as_keyword(given),
         [] <- Keyword.keys(given) -- Keyword.keys(@defaults) do
      @defaults |> Keyword.merge(given) |> check()
    else
      {:error, _} = error ->
        error

      unknown ->
        {:error,
         "zero_copy: unknown keys #{inspect(unknown)} (known: #{inspect(Keyword.keys(@defaults))})"}
    end
  end

  defp as_keyword(value) when is_map(value), do: {:ok, Map.to_list(value)}

  defp as_keyword(value) when is_list(value) do
    if Keyword.keyword?(value), do: {:ok, value}, else: not_keyword(value)
  end

  defp as_keyword(value), do: not_keyword(value)

  defp not_keyword(value),
    do: {:error, "zero_copy must be a keyword list or map, got: #{inspect(value)}"}

  defp check(config) do
    cond do
      not is_boolean(config[:enabled]) ->
        {:error, "zero_copy: enabled must be a boolean, got: #{inspect(config[:enabled])}"}

      not (config[:max_bytes] == :infinity or
               (is_integer(config[:max_bytes]) and config[:max_bytes] > 0)) ->
        {:error,
         "zero_copy: max_bytes must be a positive integer or :infinity, got: " <>
           inspect(config[:max_bytes])}

      not (is_nil(config[:dir]) or is_binary(config[:dir])) ->
        {:error, "zero_copy: dir must be a path or nil, got: #{inspect(config[:dir])}"}

      true ->
        {:ok, config}
    end
  end

  @doc """
  Opens the directory when zero copy is enabled. A directory that cannot be
  made leaves zero copy on its copying fallback, with a warning.
  """
  @spec open(keyword()) :: :ok
  def open(config) do
    :persistent_term.put({__MODULE__, :max_bytes}, config[:max_bytes])

    if config[:enabled] do
      case Snakepit.Native.zero_copy_open_dir(config[:dir]) do
        {:ok, {dir, stale}} ->
          if stale > 0 do
            Snakepit.Logger.info(
              :startup,
              "removed #{stale} zero-copy directories of VMs no longer running"
            )
          end

          :persistent_term.put(@key, dir)

        {:error, {_kind, message}} ->
          Logger.warning("Snakepit zero copy falls back to copying: #{message}")
          :persistent_term.put(@key, nil)
      end
    else
      :persistent_term.put(@key, nil)
    end

    :ok
  end

  @doc "Removes the directory and every region file in it."
  @spec close() :: :ok
  def close do
    Snakepit.Native.zero_copy_close_dir()
    :persistent_term.erase(@key)
    :ok
  end

  @doc "The open directory, or `nil` (zero copy off or unavailable)."
  @spec path() :: String.t() | nil
  def path, do: :persistent_term.get(@key, nil)

  @doc "The largest region, in bytes, or `:infinity`."
  @spec max_bytes() :: pos_integer() | :infinity
  def max_bytes, do: :persistent_term.get({__MODULE__, :max_bytes}, :infinity)

  @doc "What workers need to share regions: environment variables."
  @spec worker_env() :: %{String.t() => String.t()}
  def worker_env do
    case path() do
      # Empty, not absent: the VM's own environment must not leak a value in.
      nil -> %{"SNAKEPIT_ZERO_COPY_DIR" => ""}
      dir -> %{"SNAKEPIT_ZERO_COPY_DIR" => dir}
    end
    |> Map.put("SNAKEPIT_ZERO_COPY_MAX_BYTES", to_string(max_bytes()))
  end
end
