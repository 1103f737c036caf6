defmodule Snakepit.Logger do
  @moduledoc """
  Snakepit's logging: silent by default (errors only).

      config :snakepit, log_level: :error    # default: errors only
      config :snakepit, log_level: :warning  # warnings and errors
      config :snakepit, log_level: :info     # info, warnings, errors
      config :snakepit, log_level: :debug    # everything
      config :snakepit, log_level: :none     # not even errors

  ## Categories

  Restrict the messages below `:error` to some categories:

      config :snakepit, log_level: :debug, log_categories: [:pool, :grpc]

  Errors are never filtered by category. Categories: `:lifecycle`, `:pool`,
  `:grpc`, `:bridge`, `:worker`, `:startup`, `:shutdown`, `:telemetry`,
  `:general`.

  ## Per-process level

  A process may override the level for itself, which keeps concurrent tests
  from interfering with each other:

      Snakepit.Logger.set_process_level(:debug)
      Snakepit.Logger.with_level(:warning, fn -> ... end)
      Snakepit.Logger.clear_process_level()

  The level in effect is, in order: the process override
  (`set_process_level/1`), the Elixir Logger process level
  (`Logger.put_process_level/2`), the application config.

  Messages that pass go to Elixir's `Logger` with `snakepit_category` in
  their metadata.
  """

  @type level :: :debug | :info | :warning | :error | :none
  @type category ::
          :lifecycle
          | :pool
          | :grpc
          | :bridge
          | :worker
          | :startup
          | :shutdown
          | :telemetry
          | :general

  @levels [:debug, :info, :warning, :error, :none]
  @rank %{debug: 0, info: 1, warning: 2, error: 3, none: 4}
  @key {__MODULE__, :level}

  for level <- [:debug, :info, :warning, :error] do
    @doc """
    Logs `message` at `#{level}` level when the level in effect allows it
    (and, below `:error`, when `category` is enabled). `message` may be a
    string or a zero-arity function producing one, which is only called
    when the message is logged.
    """
    @spec unquote(level)(String.t() | (-> String.t())) :: :ok
    def unquote(level)(message), do: log(unquote(level), :general, message, [])

    @spec unquote(level)(category(), String.t() | (-> String.t())) :: :ok
    def unquote(level)(category, message), do: log(unquote(level), category, message, [])

    @spec unquote(level)(category(), String.t() | (-> String.t()), keyword()) :: :ok
    def unquote(level)(category, message, metadata),
      do: log(unquote(level), category, message, metadata)
  end

  defp log(level, category, message, metadata) do
    if should_log?(level, category) do
      message = if is_function(message, 0), do: message.(), else: message
      Logger.bare_log(level, message, [snakepit_category: category] ++ List.wrap(metadata))
    end

    :ok
  end

  @malformed_key {__MODULE__, :malformed}
  @malformed_interval_ms 1_000

  @doc """
  Logs that the calling process, a shared one (`who`: the pool, the session
  store, a registry, the bridge), dropped a message it does not understand:
  a bug of whoever sent it, never a reason for the shared process to
  crash. One error line per second at most per process; the lines
  suppressed meanwhile are counted in the next one. Returns `:ok`.
  """
  @spec malformed(category(), String.t(), term()) :: :ok
  def malformed(category, who, message) do
    now = System.monotonic_time(:millisecond)

    case Process.get(@malformed_key) do
      {last, suppressed} when now - last < @malformed_interval_ms ->
        Process.put(@malformed_key, {last, suppressed + 1})

      previous ->
        suppressed =
          case previous do
            {_last, n} when n > 0 -> " (and #{n} more since the last such line)"
            _ -> ""
          end

        Process.put(@malformed_key, {now, 0})

        error(
          category,
          "#{who} dropped a malformed message#{suppressed}: " <>
            inspect(message, limit: 8, printable_limit: 120)
        )
    end

    :ok
  end

  @doc "Is logging at `level` enabled for the calling process?"
  @spec should_log?(level()) :: boolean()
  def should_log?(level) when level in @levels do
    level != :none and @rank[level] >= @rank[get_process_level()]
  end

  @doc "Is logging at `level` in `category` enabled for the calling process?"
  @spec should_log?(level(), category()) :: boolean()
  def should_log?(level, category) do
    should_log?(level) and (level == :error or category_enabled?(category))
  end

  defp category_enabled?(category) do
    case Snakepit.Defaults.log_categories() do
      nil -> true
      :all -> true
      categories when is_list(categories) -> category in categories
      _ -> true
    end
  end

  @doc "Sets the level for the calling process only."
  @spec set_process_level(level()) :: :ok
  def set_process_level(level) when level in @levels do
    Process.put(@key, level)
    :ok
  end

  @doc "Removes the calling process's override; the application config applies again."
  @spec clear_process_level() :: :ok
  def clear_process_level do
    Process.delete(@key)
    :ok
  end

  @doc "The level in effect for the calling process."
  @spec get_process_level() :: level()
  def get_process_level do
    case Process.get(@key) do
      nil -> elixir_process_level() || configured_level()
      level -> level
    end
  end

  defp elixir_process_level do
    case Logger.get_process_level(self()) do
      nil -> nil
      level when level in [:emergency, :alert, :critical, :error] -> :error
      :notice -> :info
      :all -> :debug
      level when level in @levels -> level
      _ -> nil
    end
  end

  defp configured_level do
    case Snakepit.Defaults.log_level() do
      level when level in @levels -> level
      :warn -> :warning
      _ -> :error
    end
  end

  @doc """
  Runs `fun` with `level` in effect for the calling process, then restores
  the previous override (also when `fun` raises).
  """
  @spec with_level(level(), (-> result)) :: result when result: term()
  def with_level(level, fun) when level in @levels and is_function(fun, 0) do
    previous = Process.get(@key)
    set_process_level(level)

    try do
      fun.()
    after
      if previous, do: Process.put(@key, previous), else: Process.delete(@key)
    end
  end
end
