defmodule Snakepit.Test.AppEnv do
  @moduledoc """
  Clears `config :snakepit` keys for a test and puts their values back
  when it ends.
  """

  import ExUnit.Callbacks, only: [on_exit: 1]

  @doc "Deletes `keys` now; restores their previous values on exit."
  def isolate(keys) do
    saved = for k <- keys, do: {k, Application.fetch_env(:snakepit, k)}

    on_exit(fn ->
      for {k, v} <- saved do
        case v do
          {:ok, v} -> Application.put_env(:snakepit, k, v)
          :error -> Application.delete_env(:snakepit, k)
        end
      end
    end)

    Enum.each(keys, &Application.delete_env(:snakepit, &1))
    :ok
  end
end
