defmodule Snakepit.Worker.Output do
  @moduledoc """
  What a worker's stdout and stderr may cost the VM, as pure functions
  used by `Snakepit.GRPCWorker`.

  Output arrives from the native core one line per message (a line longer
  than 64 KiB comes in 64 KiB pieces). Three bounds keep a worker that
  prints without pause, or prints binary, from flooding the VM:

    * **Lines in flight** - at most `window/0` (#{64}) output messages are
      ever queued to a worker's process: it acknowledges each one it
      handles, and the native core reads and *drops* what comes past the
      window (the Python process never blocks on a full pipe). The worker's
      mailbox stays small, so its other messages (a closed call lane, its
      Python process's exit) are handled at once.
    * **Lines logged** - at most `lines_per_second/0` (#{200}) lines per
      worker per second go to `Logger` (at the level
      `Snakepit.Worker.PythonLog` gives each); the rest are dropped.
    * **Line size and bytes** - a line is cut to `max_line_bytes/0` (16 KiB)
      with a marker saying how much was cut, bytes that are not UTF-8 become
      U+FFFD and control characters (other than tab) are shown as `\\xNN`,
      so any output is printable and never makes a `Logger` formatter fail.

  Dropped lines are counted: once a second at most, while lines are being
  dropped, the worker emits `[:snakepit, :worker, :output_dropped]`
  (measurement `count`, metadata `worker_id` and `pool`) and logs one
  `:warning` line (`Snakepit.Logger`, category `:worker`) with the count.
  """

  @window 64
  @lines_per_second 200
  @max_line_bytes 16 * 1024
  @report_interval_ms 1_000

  defstruct second: nil, logged: 0, dropped: 0, report_pending: false

  @type t :: %__MODULE__{
          second: integer() | nil,
          logged: non_neg_integer(),
          dropped: non_neg_integer(),
          report_pending: boolean()
        }

  @doc "Output messages a worker's process may have queued at most."
  @spec window() :: pos_integer()
  def window, do: @window

  @doc "Lines of one worker logged per second at most."
  @spec lines_per_second() :: pos_integer()
  def lines_per_second, do: @lines_per_second

  @doc "The longest line logged, in bytes (before the marker of what was cut)."
  @spec max_line_bytes() :: pos_integer()
  def max_line_bytes, do: @max_line_bytes

  @doc "How often, at most, dropped lines are reported (ms)."
  @spec report_interval_ms() :: pos_integer()
  def report_interval_ms, do: @report_interval_ms

  @doc "A worker's output state: nothing logged or dropped yet."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc """
  May one more line be logged at `now_ms`? `{:log, state}` while this
  second's quota lasts, else `{:drop, state}` (the line is counted).
  """
  @spec admit(t(), integer()) :: {:log | :drop, t()}
  def admit(%__MODULE__{} = state, now_ms) do
    second = div(now_ms, 1_000)

    state =
      if state.second == second, do: state, else: %{state | second: second, logged: 0}

    if state.logged < @lines_per_second,
      do: {:log, %{state | logged: state.logged + 1}},
      else: {:drop, %{state | dropped: state.dropped + 1}}
  end

  @doc "Counts `n` more dropped lines (those the native core dropped)."
  @spec dropped(t(), non_neg_integer()) :: t()
  def dropped(%__MODULE__{} = state, 0), do: state
  def dropped(%__MODULE__{} = state, n), do: %{state | dropped: state.dropped + n}

  @doc """
  Should a report be scheduled now? True once lines were dropped and no
  report is pending; the state then has one pending.
  """
  @spec schedule_report?(t()) :: {boolean(), t()}
  def schedule_report?(%__MODULE__{dropped: 0} = state), do: {false, state}
  def schedule_report?(%__MODULE__{report_pending: true} = state), do: {false, state}
  def schedule_report?(state), do: {true, %{state | report_pending: true}}

  @doc "The lines dropped since the last report, and the state with none."
  @spec take_report(t()) :: {non_neg_integer(), t()}
  def take_report(%__MODULE__{} = state),
    do: {state.dropped, %{state | dropped: 0, report_pending: false}}

  @doc """
  `line` as a printable string: at most `max_line_bytes/0` bytes of it (and
  a marker of what was cut), invalid UTF-8 replaced by U+FFFD, control
  characters other than tab escaped as `\\xNN` (or `\\u{NNNN}`).

      iex> Snakepit.Worker.Output.printable("ok \\xFF\\e[1m")
      "ok \\uFFFD\\\\x1B[1m"
      iex> line = Snakepit.Worker.Output.printable(String.duplicate("a", 20_000))
      iex> {byte_size(line) < 17_000, String.ends_with?(line, "[3616 more bytes cut]")}
      {true, true}
  """
  @spec printable(binary()) :: String.t()
  def printable(line) when is_binary(line) do
    {kept, cut} =
      if byte_size(line) > @max_line_bytes,
        do: {binary_part(line, 0, @max_line_bytes), byte_size(line) - @max_line_bytes},
        else: {line, 0}

    text = kept |> String.replace_invalid() |> escape_controls()
    if cut > 0, do: text <> " … [#{cut} more bytes cut]", else: text
  end

  def printable(other), do: printable(inspect(other))

  # Control characters (C0 but tab, DEL, C1) and the two non-characters
  # U+FFFE and U+FFFF: what String.printable?/1 refuses in valid UTF-8.
  defp controls, do: ~r/[\x{00}-\x{08}\x{0A}-\x{1F}\x{7F}-\x{9F}\x{FFFE}\x{FFFF}]/u

  # Fast path: most lines have no control character at all.
  defp escape_controls(text) do
    if Regex.match?(controls(), text),
      do: Regex.replace(controls(), text, &escape/1),
      else: text
  end

  defp escape(<<c>>), do: "\\x" <> Base.encode16(<<c>>)
  defp escape(<<c::utf8>>), do: "\\u{" <> Integer.to_string(c, 16) <> "}"
end
