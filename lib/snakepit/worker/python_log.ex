defmodule Snakepit.Worker.PythonLog do
  @moduledoc """
  What a worker's Python says, in Elixir's `Logger`.

  The worker sends each `logging` record at or above `python_log_level`
  (default `:warning`, Python's own default; `config :snakepit,
  python_log_level: :info` for more, `:none` for none) as one
  `SNAKEPIT_LOG {json}` line on its stderr (`snakepit_bridge`'s
  `_internal/log_forward.py`). Each becomes a `Logger` call at the mapped
  level:

  | Python | Logger |
  |---|---|
  | DEBUG | `:debug` |
  | INFO | `:info` |
  | WARNING | `:warning` |
  | ERROR, CRITICAL | `:error` |

  with metadata `pool`, `worker_id`, `correlation_id` (of the call the
  record was made in), `python_logger`, `python_file` and `python_line`.
  Python warnings arrive as WARNING records of `py.warnings`. Other output
  is logged too: a line on stdout (`print`) at `:info`, a plain line on
  stderr (a thread's uncaught traceback, a C library's message) at
  `:warning`, with `python_stream` in the metadata.

  Every line passes `Snakepit.Worker.Output`'s bounds first: at most 200
  lines per worker per second (the rest dropped and counted), each cut to
  16 KiB and made printable.
  """

  alias Snakepit.Worker.Output

  @prefix "SNAKEPIT_LOG "
  @levels %{
    "DEBUG" => :debug,
    "INFO" => :info,
    "WARNING" => :warning,
    "WARN" => :warning,
    "ERROR" => :error,
    "CRITICAL" => :error,
    "FATAL" => :error
  }
  @settings [:debug, :info, :warning, :error, :none]

  @doc "The level the workers are told (`SNAKEPIT_LOG_LEVEL`)."
  @spec worker_level() :: String.t()
  def worker_level do
    case Snakepit.Defaults.python_log_level() do
      level when level in @settings -> Atom.to_string(level)
      _other -> "warning"
    end
  end

  @doc """
  The `Logger` call one output line of worker `worker_id` of `pool` makes:
  `{level, message, metadata}`.
  """
  @spec entry(:stdout | :stderr, binary(), String.t(), atom()) ::
          {Logger.level(), String.t(), keyword()}
  def entry(stream, line, worker_id, pool) do
    base = [pool: pool, worker_id: worker_id]

    case record(stream, line) do
      {:ok, record} ->
        level = Map.get(@levels, record["level"], :warning)
        logger = text(record["logger"])

        meta = [
          correlation_id: text(record["correlation_id"]),
          python_logger: logger,
          python_file: text(record["file"]),
          python_line: if(is_integer(record["line"]), do: record["line"])
        ]

        {level, "[#{worker_id}] #{logger}: #{printable_lines(text(record["message"]))}",
         base ++ Enum.reject(meta, fn {_k, v} -> v in [nil, ""] end)}

      :plain ->
        level = if stream == :stdout, do: :info, else: :warning
        {level, "[#{worker_id}] #{Output.printable(line)}", base ++ [python_stream: stream]}
    end
  end

  defp record(:stderr, @prefix <> json) do
    case JSON.decode(json) do
      {:ok, %{} = record} -> {:ok, record}
      _ -> :plain
    end
  end

  defp record(_stream, _line), do: :plain

  # A record's message keeps its lines (a traceback reads as one); each is
  # made printable.
  defp printable_lines(message),
    do: message |> String.split("\n") |> Enum.map_join("\n", &Output.printable/1)

  defp text(value) when is_binary(value), do: value
  defp text(nil), do: ""
  defp text(value), do: inspect(value)
end
