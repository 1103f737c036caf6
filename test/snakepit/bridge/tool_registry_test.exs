defmodule Snakepit.Bridge.ToolRegistryTest do
  # The registry of the running application (pooling is off in tests).
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.{InternalToolSpec, ToolRegistry}
  alias Snakepit.Error

  setup do
    session = "reg-#{System.unique_integer([:positive])}"
    on_exit(fn -> if Process.whereis(ToolRegistry), do: ToolRegistry.cleanup_session(session) end)
    {:ok, session: session}
  end

  defp unique(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  test "an Elixir tool is registered, listed, found and executed", %{session: s} do
    assert :ok =
             ToolRegistry.register_elixir_tool(
               s,
               "add",
               fn %{"a" => a, "b" => b} -> {:ok, a + b} end,
               description: "Add two numbers",
               exposed_to_python: true,
               parameters: ["a", %{"name" => "b", "type" => "int", "required" => true}],
               team: "core"
             )

    assert {:ok, %InternalToolSpec{} = spec} = ToolRegistry.get_tool(s, "add")
    assert spec.type == :local
    assert spec.exposed_to_python
    assert spec.description == "Add two numbers"
    assert spec.metadata == %{team: "core"}

    assert spec.parameters == [
             %{name: "a", type: "", required: false, description: ""},
             %{name: "b", type: "int", required: true, description: ""}
           ]

    assert "add" in Enum.map(ToolRegistry.list_tools(s), & &1.name)
    assert "add" in Enum.map(ToolRegistry.list_exposed_elixir_tools(s), & &1.name)
    assert {:ok, 5} = ToolRegistry.execute_local_tool(s, "add", %{"a" => 2, "b" => 3})
  end

  test "handler results and failures", %{session: s} do
    tools = %{
      "plain" => fn _ -> %{v: 1} end,
      "tagged_error" => fn _ -> {:error, :nope} end,
      "raises" => fn _ -> raise ArgumentError, "bad" end,
      "throws" => fn _ -> throw(:t) end,
      "exits" => fn _ -> exit(:x) end
    }

    for {name, fun} <- tools, do: :ok = ToolRegistry.register_elixir_tool(s, name, fun)

    assert {:ok, %{v: 1}} = ToolRegistry.execute_local_tool(s, "plain", %{})
    assert {:error, :nope} = ToolRegistry.execute_local_tool(s, "tagged_error", %{})

    assert {:error, %ArgumentError{message: "bad"}} =
             ToolRegistry.execute_local_tool(s, "raises", %{})

    assert {:error, {:throw, :t}} = ToolRegistry.execute_local_tool(s, "throws", %{})
    assert {:error, {:exit, :x}} = ToolRegistry.execute_local_tool(s, "exits", %{})
    assert {:error, :not_found} = ToolRegistry.execute_local_tool(s, "missing", %{})
  end

  test "Python tools are listed but not executed locally", %{session: s} do
    assert :ok =
             ToolRegistry.register_python_tool(s, "predict", "w1", %{
               description: "Predict",
               parameters: [%{name: "text", type: "str", required: true}],
               supports_streaming: true
             })

    assert {:ok, %InternalToolSpec{type: :remote, worker_id: "w1", supports_streaming: true}} =
             ToolRegistry.get_tool(s, "predict")

    refute "predict" in Enum.map(ToolRegistry.list_exposed_elixir_tools(s), & &1.name)
    assert {:error, :not_local} = ToolRegistry.execute_local_tool(s, "predict", %{})
  end

  test "register_tools registers all or nothing", %{session: s} do
    assert {:ok, ["one", "two"]} =
             ToolRegistry.register_tools(s, [
               %{name: "one", worker_id: "w", parameters: [%{name: "x", default: [1]}]},
               %{"name" => "two", "description" => "second"}
             ])

    assert {:ok, %{description: "second", worker_id: ""}} = ToolRegistry.get_tool(s, "two")
    assert {:ok, %{parameters: [%{name: "x", default: [1]}]}} = ToolRegistry.get_tool(s, "one")

    assert {:error, %Error{category: :validation}} =
             ToolRegistry.register_tools(s, [%{name: "three"}, %{name: 3}])

    assert {:error, :not_found} = ToolRegistry.get_tool(s, "three")
    assert {:error, %Error{}} = ToolRegistry.register_tools(s, :nope)
  end

  test "the global scope is seen from every session and shadowed by the session's own",
       %{session: s} do
    name = unique("shared")

    assert :ok =
             ToolRegistry.register_elixir_tool(name, fn _ -> :global end, %{
               exposed_to_python: true
             })

    assert {:ok, :global} = ToolRegistry.execute_local_tool(s, name, %{})
    assert {:ok, :global} = ToolRegistry.execute_local_tool("", name, %{})

    assert :ok = ToolRegistry.register_elixir_tool(s, name, fn _ -> :own end)
    assert {:ok, :own} = ToolRegistry.execute_local_tool(s, name, %{})

    assert [%{name: ^name, handler: h}] =
             Enum.filter(ToolRegistry.list_tools(s), &(&1.name == name))

    assert h.(%{}) == :own
    # The session's version is not exposed, so Python sees none from s.
    refute name in Enum.map(ToolRegistry.list_exposed_elixir_tools(s), & &1.name)

    assert :ok = ToolRegistry.cleanup_session(s)
    assert {:ok, :global} = ToolRegistry.execute_local_tool(s, name, %{})
    assert [] = ToolRegistry.session_tools(s)
  end

  test "bad registrations are refused with a validation error", %{session: s} do
    for {args, what} <- [
          {[s, "", fn _ -> 1 end, %{}], "tool name"},
          {[s, :atom_name, fn _ -> 1 end, %{}], "tool name"},
          {[s, <<255>>, fn _ -> 1 end, %{}], "UTF-8"},
          {[s, "t", fn -> 1 end, %{}], "one argument"},
          {[s, "t", :not_a_fun, %{}], "one argument"},
          {[:no_session, "t", fn _ -> 1 end, %{}], "session id"},
          {[s, "t", fn _ -> 1 end, "meta"], "metadata"},
          {[s, "t", fn _ -> 1 end, %{parameters: :x}], "parameters"},
          {[s, "t", fn _ -> 1 end, %{parameters: [%{type: "int"}]}], "parameter"}
        ] do
      assert {:error, %Error{category: :validation, message: message}} =
               apply(ToolRegistry, :register_elixir_tool, args)

      assert message =~ what
    end

    assert {:error, %Error{}} = ToolRegistry.register_python_tool(s, "t", :w)
    assert ToolRegistry.session_tools(s) == []
  end

  test "lookups of odd names find nothing rather than crash" do
    assert {:error, :not_found} = ToolRegistry.get_tool(nil, "x")
    assert {:error, :not_found} = ToolRegistry.get_tool("s", 42)
    assert :ok = ToolRegistry.cleanup_session(:not_a_session)
  end
end
