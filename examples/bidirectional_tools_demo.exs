# Tools in both directions: Python tools called from Elixir, and Elixir
# functions registered as tools that Python calls back through the bridge,
# per session or globally.
#
#     mix run examples/bidirectional_tools_demo.exs

defmodule BidirectionalToolsDemo do
  alias Snakepit.Bridge.ToolRegistry

  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 34) <> inspect(value, pretty: true, width: 90))

  def run do
    :ok = Snakepit.Pool.await_init_complete()

    # A global Elixir tool, visible from every session.
    :ok =
      ToolRegistry.register_elixir_tool(
        "hash",
        fn %{"data" => data} ->
          %{sha256: Base.encode16(:crypto.hash(:sha256, data), case: :lower)}
        end,
        %{
          description: "SHA-256 of data",
          exposed_to_python: true,
          parameters: [%{name: "data", type: "str", required: true}]
        }
      )

    # A session's own tool: only calls in session "report-1" see it.
    session = "report-1"
    {:ok, _} = Snakepit.execute_in_session(session, "ping", %{})

    :ok =
      ToolRegistry.register_elixir_tool(
        session,
        "format_report",
        fn params -> "#{params["title"]}: #{Enum.join(params["items"], ", ")}" end,
        %{description: "Format a report", exposed_to_python: true}
      )

    show(
      "Elixir tools Python may call",
      Enum.map(ToolRegistry.list_exposed_elixir_tools(session), & &1.name)
    )

    # Python's call_elixir_demo calls the named Elixir tool through the bridge.
    show(
      "Python -> Elixir hash",
      Snakepit.execute_in_session(session, "call_elixir_demo", %{
        tool_name: "hash",
        data: "snakepit"
      })
    )

    show(
      "Python -> Elixir format_report",
      Snakepit.execute_in_session(session, "call_elixir_demo", %{
        tool_name: "format_report",
        title: "fruit",
        items: ["apple", "pear"]
      })
    )

    {:error, error} =
      Snakepit.execute_in_session("other-session", "call_elixir_demo", %{
        tool_name: "format_report"
      })

    show("another session cannot", Exception.message(error))

    # And the Python tools, as the registry knows them.
    python =
      ToolRegistry.list_tools(session)
      |> Enum.filter(&(&1.type == :remote))
      |> Enum.map(& &1.name)

    show("Python tools (first 6)", Enum.take(Enum.sort(python), 6))
  end
end

BidirectionalToolsDemo.run()
