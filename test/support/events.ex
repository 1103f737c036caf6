defmodule Snakepit.Test.Events do
  @moduledoc """
  Sends the calling test `{:event, event, measurements, metadata}` for each
  of `events` Snakepit emits, until the test ends.
  """

  import ExUnit.Callbacks, only: [on_exit: 1]

  @doc "Forwards `events` to the calling process; detached when the test ends."
  def forward(events) do
    parent = self()
    id = "test-events-#{System.unique_integer([:positive])}"

    :ok =
      Snakepit.Telemetry.attach_many(
        id,
        events,
        fn event, measurements, meta, _ -> send(parent, {:event, event, measurements, meta}) end,
        nil
      )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
  end
end
