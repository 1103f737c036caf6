defmodule Bench.Args do
  @moduledoc "What every benchmark reads from its environment, and its medians."

  @doc "A comma-separated list of integers in the environment variable `name`, else `default`."
  def env_ints(name, default) do
    case System.get_env(name) do
      nil ->
        default

      text ->
        text |> String.split(",", trim: true) |> Enum.map(&String.to_integer(String.trim(&1)))
    end
  end

  @doc "The median (the upper one of an even count)."
  def median(values) do
    sorted = Enum.sort(values)
    Enum.at(sorted, div(length(sorted), 2))
  end
end
