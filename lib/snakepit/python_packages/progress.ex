defmodule Snakepit.PythonPackages.Progress do
  @moduledoc """
  What an installer prints, kept whole for error reports, with its progress
  lines (`Collecting ...`, `Downloading ...`, `Installing collected
  packages ...`, `Successfully installed ...`) logged as they come, so a
  long install says what it is doing. A `Collectable` for `System.cmd/3`'s
  `:into`.
  """

  require Logger

  defstruct output: [], partial: "", report: nil

  @type t :: %__MODULE__{
          output: iodata(),
          partial: String.t(),
          report: (String.t() -> any()) | nil
        }

  @progress ~r/^\s*(Collecting|Downloading|Installing collected|Successfully installed|Resolved|Prepared|Installed|Building wheel)/

  @doc "A collector that hands each progress line to `report` (default: `Logger.info`)."
  @spec new((String.t() -> any()) | nil) :: t()
  def new(report \\ nil), do: %__MODULE__{report: report || (&Logger.info("snakepit: " <> &1))}

  @doc "Everything the installer printed."
  @spec output(t()) :: String.t()
  def output(%__MODULE__{output: output, partial: partial}),
    do: IO.iodata_to_binary([output, partial])

  @doc false
  def line(%__MODULE__{report: report}, line) do
    if Regex.match?(@progress, line), do: report.(String.trim(line))
  end

  defimpl Collectable do
    def into(progress) do
      collector = fn
        acc, {:cont, chunk} ->
          {lines, partial} = split(acc.partial <> chunk)
          Enum.each(lines, &Snakepit.PythonPackages.Progress.line(acc, &1))
          %{acc | output: [acc.output, chunk], partial: partial}

        acc, :done ->
          if acc.partial != "", do: Snakepit.PythonPackages.Progress.line(acc, acc.partial)
          %{acc | output: acc.output, partial: acc.partial}

        _acc, :halt ->
          :ok
      end

      {progress, collector}
    end

    defp split(text) do
      parts = String.split(text, "\n")
      {Enum.drop(parts, -1), List.last(parts)}
    end
  end
end
