# A pool of real Python workers doing real calls.
#
#     mix run examples/quickstart.exs        (or: make demo)
#
# Snakepit starts with the application; the pool comes from config
# (config/config.exs sets pool_size: 2 and the bundled ShowcaseAdapter).

defmodule Quickstart do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 24) <> inspect(value, pretty: true, width: 90))

  def run do
    started = System.monotonic_time(:millisecond)
    :ok = Snakepit.Pool.await_init_complete()
    show("pool ready after", "#{System.monotonic_time(:millisecond) - started} ms")
    show("workers", Snakepit.list_workers())

    show("ping", Snakepit.execute("ping", %{}))

    show(
      "echo",
      Snakepit.execute("echo", %{message: "hello", numbers: [1, 2, 3], nested: %{ok: true}})
    )

    show("add", Snakepit.execute("add", %{a: 40, b: 2}))

    # The same session goes to the same worker while it is free.
    session = "demo-session"

    pids =
      for _ <- 1..3 do
        {:ok, %{"pid" => pid}} = Snakepit.execute_in_session(session, "get_pid", %{})
        pid
      end

    show("session worker pids", pids)

    IO.puts("streaming stream_data (count: 4):")

    :ok =
      Snakepit.execute_stream("stream_data", %{count: 4}, fn chunk ->
        IO.puts(
          "    chunk " <> inspect(Map.take(chunk, ["index", "data", "progress", "is_final"]))
        )
      end)

    show("unknown tool", Snakepit.execute("no_such_tool", %{}))
    show("stats", Snakepit.get_stats())
  end
end

Quickstart.run()
