defmodule Snakepit.Bootstrap.Runner do
  @moduledoc """
  How `Snakepit.Bootstrap` runs its steps, so that tests can inject a fake.
  The default (`Snakepit.Bootstrap.Runner.System`) runs commands and prints
  their output.
  """

  @callback cmd(command :: String.t(), args :: [String.t()], keyword()) :: :ok | {:error, term()}
  @callback mix(task :: String.t(), args :: [String.t()]) :: :ok | {:error, term()}
end

defmodule Snakepit.Bootstrap.Runner.System do
  @moduledoc false
  @behaviour Snakepit.Bootstrap.Runner

  @impl true
  def cmd(command, args, opts) do
    echo = Keyword.get(opts, :echo, true)
    collect = if echo, do: IO.stream(), else: ""
    opts = Keyword.take(opts, [:cd, :env]) ++ [stderr_to_stdout: true, into: collect]

    case System.cmd(command, args, opts) do
      {_, 0} ->
        :ok

      {out, status} ->
        {:error,
         "#{Path.basename(command)} exited with #{status}#{if is_binary(out), do: ": " <> out, else: ""}"}
    end
  rescue
    e in ErlangError -> {:error, "cannot run #{command}: #{Exception.message(e)}"}
  end

  @impl true
  def mix(task, args) do
    Mix.Task.run(task, args)
    :ok
  rescue
    e -> {:error, Exception.message(e)}
  end
end
