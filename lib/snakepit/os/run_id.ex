defmodule Snakepit.RunID do
  @moduledoc """
  Short identifiers of one BEAM run. Every worker's command line carries
  `--snakepit-run-id ID`, so processes a run started can be recognised in
  the process table later, also after the run itself is gone.
  """

  @alphabet ~c"0123456789abcdefghijklmnopqrstuvwxyz"

  @doc "A fresh 7-character base36 id."
  @spec generate() :: String.t()
  def generate do
    for _ <- 1..7, into: "", do: <<Enum.random(@alphabet)>>
  end

  @doc "The id of this run, made once per VM start of the application."
  @spec current() :: String.t()
  def current do
    case :persistent_term.get({__MODULE__, :current}, nil) do
      nil ->
        id = generate()
        :persistent_term.put({__MODULE__, :current}, id)
        id

      id ->
        id
    end
  end

  @doc "Finds the run id in a command line (`--snakepit-run-id ID` or `--run-id ID`)."
  @spec extract_from_command(String.t()) :: {:ok, String.t()} | {:error, :not_found}
  def extract_from_command(command) when is_binary(command) do
    case Regex.run(~r/--(?:snakepit-)?run-id[ =]([0-9a-z]{7})\b/, command) do
      [_, id] -> {:ok, id}
      nil -> {:error, :not_found}
    end
  end

  @doc "True for a well-formed run id."
  @spec valid?(term()) :: boolean()
  def valid?(id), do: is_binary(id) and String.match?(id, ~r/\A[0-9a-z]{7}\z/)
end
