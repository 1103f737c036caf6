# The basic calls: ping, echo, add, a call with a timeout, and what errors
# look like, on a pool of real Python workers (the bundled ShowcaseAdapter).
#
#     mix run examples/grpc_basic.exs

defmodule GrpcBasic do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 22) <> inspect(value, pretty: true, width: 90))

  def run do
    :ok = Snakepit.Pool.await_init_complete()
    show("workers", Snakepit.list_workers())
    show("ping", Snakepit.execute("ping", %{message: "hello"}))

    show(
      "echo",
      Snakepit.execute("echo", %{text: "héllo", list: [1, 2.5, nil], map: %{ok: true}})
    )

    show("add", Snakepit.execute("add", %{a: 40, b: 2}))

    # A budget for the whole call; the error is a struct, not an exit.
    {:error, timeout} = Snakepit.execute("sleep", %{ms: 2_000}, timeout: 200)
    show("sleep past timeout", {timeout.category, Exception.message(timeout)})

    {:error, unknown} = Snakepit.execute("no_such_tool", %{})
    show("unknown tool", {unknown.category, Exception.message(unknown)})

    {:error, raised} =
      Snakepit.execute("error_demo", %{error_type: "value", message: "bad input"})

    # Python exceptions arrive as structs named after them.
    show("a Python ValueError", {raised.__struct__, raised.python_type, raised.message})
  end
end

GrpcBasic.run()
