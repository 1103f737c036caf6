defmodule Snakepit.ZeroCopy.Settings do
  @moduledoc """
  The `zero_copy` configuration, and zero copy's state for this
  application start:

      config :snakepit,
        zero_copy: [
          enabled: true,            # false: refs hold their bytes and copy them
          max_bytes: :infinity,     # largest region (bytes), either direction
          max_live_regions: 8192,   # shared regions alive at once
          inline_below: 65_536      # smaller refs live on the heap and copy
        ]

  Regions are anonymous memory files sealed against resizing (see
  `Snakepit.ZeroCopy`), so there is no directory to configure: the older
  `dir:` key is accepted and ignored. A shared region holds one file
  descriptor and one memory mapping of the VM until it is released;
  `max_live_regions` is lowered at start to half of what the process's
  descriptor limit (`ulimit -n`) and the kernel's `vm.max_map_count`
  allow, so the VM never runs into either. Refs smaller than
  `inline_below` bytes need neither: they hold their bytes on the heap and
  travel inside the call's message, however many there are.

  Workers learn the state from their environment (`worker_env/0`).
  """

  require Logger

  @key {__MODULE__, :state}
  @defaults [
    enabled: true,
    max_bytes: :infinity,
    max_live_regions: 8192,
    inline_below: 65_536,
    dir: nil
  ]

  @doc "The `zero_copy` configuration with defaults, checked."
  @spec config() :: {:ok, keyword()} | {:error, String.t()}
  def config do
    given = Snakepit.Defaults.zero_copy()

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

      not (config[:max_bytes] == :infinity or pos_int?(config[:max_bytes])) ->
        {:error,
         "zero_copy: max_bytes must be a positive integer or :infinity, got: " <>
           inspect(config[:max_bytes])}

      not pos_int?(config[:max_live_regions]) ->
        {:error,
         "zero_copy: max_live_regions must be a positive integer, got: " <>
           inspect(config[:max_live_regions])}

      not (is_integer(config[:inline_below]) and config[:inline_below] >= 0) ->
        {:error,
         "zero_copy: inline_below must be a non-negative integer, got: " <>
           inspect(config[:inline_below])}

      not (is_nil(config[:dir]) or is_binary(config[:dir])) ->
        {:error, "zero_copy: dir must be a path or nil, got: #{inspect(config[:dir])}"}

      true ->
        {:ok, config}
    end
  end

  defp pos_int?(value), do: is_integer(value) and value > 0

  @doc """
  Turns zero copy on (when enabled) for this application start, with its
  limits. Before any worker starts: workers are told the state.
  """
  @spec open(keyword()) :: :ok
  def open(config) do
    max_bytes = config[:max_bytes]

    state =
      if config[:enabled] do
        native_max = if max_bytes == :infinity, do: 0, else: max_bytes

        {:ok, limit} =
          Snakepit.Native.zero_copy_enable(
            config[:max_live_regions],
            config[:inline_below],
            native_max
          )

        if limit < config[:max_live_regions] do
          Snakepit.Logger.info(
            :startup,
            "zero copy: at most #{limit} shared regions alive at once (max_live_regions " <>
              "#{config[:max_live_regions]} lowered to fit the descriptor and mapping limits)"
          )
        end

        %{
          enabled: true,
          max_bytes: max_bytes,
          live_limit: limit,
          inline_below: config[:inline_below]
        }
      else
        Snakepit.Native.zero_copy_disable()
        %{enabled: false, max_bytes: max_bytes, live_limit: 0, inline_below: 0}
      end

    :persistent_term.put(@key, state)
    :ok
  end

  @doc "Turns zero copy off: shared refs of this start can no longer be sent."
  @spec close() :: :ok
  def close do
    Snakepit.Native.zero_copy_disable()
    :persistent_term.erase(@key)
    :ok
  end

  @doc "Whether refs share memory now (else they copy)."
  @spec enabled?() :: boolean()
  def enabled?, do: state().enabled

  @doc "The largest region, in bytes, or `:infinity`."
  @spec max_bytes() :: pos_integer() | :infinity
  def max_bytes, do: state().max_bytes

  @doc "The most shared regions alive at once (0 while zero copy is off)."
  @spec live_limit() :: non_neg_integer()
  def live_limit, do: state().live_limit

  defp state do
    :persistent_term.get(@key, %{
      enabled: false,
      max_bytes: :infinity,
      live_limit: 0,
      inline_below: 0
    })
  end

  @doc "What workers need to share regions: environment variables."
  @spec worker_env() :: %{String.t() => String.t()}
  def worker_env do
    state = state()

    %{
      # Empty, not absent: the VM's own environment must not leak a value in.
      "SNAKEPIT_ZERO_COPY" => if(state.enabled, do: "memfd", else: ""),
      "SNAKEPIT_ZERO_COPY_VM_PID" => System.pid(),
      "SNAKEPIT_ZERO_COPY_INLINE_BELOW" => to_string(state.inline_below),
      "SNAKEPIT_ZERO_COPY_MAX_BYTES" => to_string(state.max_bytes)
    }
  end
end
