defmodule Snakepit.Test.CallLoad do
  @moduledoc """
  Background load for pool tests: `n` callers calling one tool in a loop
  until `stop/1`, which checks that every call succeeded and returns every
  result.
  """

  import ExUnit.Assertions, only: [assert: 2]

  @doc "Starts `n` callers calling `tool` with `args`; returns a handle for `stop/1`."
  def start(n, tool, args) do
    stop = :atomics.new(1, [])
    tasks = for _ <- 1..n, do: Task.async(fn -> loop(stop, tool, args, []) end)
    {stop, tasks}
  end

  @doc "Stops the callers; asserts none of their calls failed; returns the results."
  def stop({stop, tasks}) do
    :atomics.put(stop, 1, 1)
    results = tasks |> Task.await_many(60_000) |> List.flatten()
    failed = Enum.reject(results, &match?({:ok, _}, &1))

    assert failed == [],
           "#{length(failed)} of #{length(results)} calls failed: #{inspect(Enum.take(failed, 3))}"

    results
  end

  defp loop(stop, tool, args, acc) do
    if :atomics.get(stop, 1) == 1,
      do: acc,
      else: loop(stop, tool, args, [Snakepit.execute(tool, args, timeout: 30_000) | acc])
  end
end
