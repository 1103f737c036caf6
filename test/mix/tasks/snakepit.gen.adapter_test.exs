defmodule Mix.Tasks.Snakepit.Gen.AdapterTest do
  use ExUnit.Case, async: false
  @moduletag :python

  alias Mix.Tasks.Snakepit.Gen.Adapter
  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.Test.AppPool

  setup do
    host = Path.join(System.tmp_dir!(), "snakepit-gen-#{System.unique_integer([:positive])}")
    File.mkdir_p!(host)
    shell = Mix.shell()
    Mix.shell(Mix.Shell.Process)
    previous_path = Application.fetch_env(:snakepit, :python_path)

    on_exit(fn ->
      Mix.shell(shell)
      File.rm_rf!(host)

      case previous_path do
        {:ok, value} -> Application.put_env(:snakepit, :python_path, value)
        :error -> Application.delete_env(:snakepit, :python_path)
      end
    end)

    {:ok, host: host}
  end

  test "the generated adapter runs as generated in a real pool", %{host: host} do
    python_dir = Path.join(host, "priv/python")
    Adapter.run(["GenDemoAdapter", "--path", python_dir])

    assert_received {:mix_shell, :info, ["* creating " <> init]}
    assert init == Path.join(python_dir, "gen_demo_adapter/__init__.py")
    assert_received {:mix_shell, :info, ["* creating " <> _adapter]}
    assert_received {:mix_shell, :info, [hint]}
    assert hint =~ ~s(["--adapter", "gen_demo_adapter.GenDemoAdapter"])

    Application.put_env(:snakepit, :python_path, [python_dir])
    AppPool.start!(pool_size: 1, adapter_args: ["--adapter", "gen_demo_adapter.GenDemoAdapter"])

    assert {:ok, %{"message" => "Hello, Ada!"}} = Snakepit.execute("hello", %{name: "Ada"})
    assert {:ok, %{"result" => 5}} = Snakepit.execute("add", %{a: 2, b: 3})
    assert {:error, %Snakepit.Error.ValueError{}} = Snakepit.execute("add", %{a: "x", b: 3})

    parent = self()
    assert :ok = Snakepit.execute_stream("count", %{n: 3}, &send(parent, {:chunk, &1}))
    assert_received {:chunk, %{"number" => 1}}
    assert_received {:chunk, %{"number" => 3}}

    :ok =
      ToolRegistry.register_elixir_tool(
        "",
        "gen_upcase",
        fn %{"s" => s} -> String.upcase(s) end,
        %{
          exposed_to_python: true
        }
      )

    assert {:ok, "ABC"} =
             Snakepit.execute("call_elixir", %{tool_name: "gen_upcase", params: %{s: "abc"}})

    tools = Map.new(ToolRegistry.list_tools(""), &{&1.name, &1})

    assert [%{name: "a", type: "float", required: true, description: "the first number."} | _] =
             tools["add"].parameters

    assert tools["count"].supports_streaming
  end

  test "names in either style; bad names and overwrites are refused", %{host: host} do
    assert Adapter.names("MyAdapter") == {"my_adapter", "MyAdapter"}
    assert Adapter.names("my_adapter") == {"my_adapter", "MyAdapter"}

    for bad <- ["9lives", "my-adapter", "My.Adapter", ""] do
      assert_raise Mix.Error, fn -> Adapter.names(bad) end
    end

    Adapter.run(["Once", "--path", host])
    assert_raise Mix.Error, ~r/already exists/, fn -> Adapter.run(["Once", "--path", host]) end
    assert :ok = Adapter.run(["Once", "--path", host, "--force"])
    assert_raise Mix.Error, ~r/usage/, fn -> Adapter.run([]) end
    assert_raise Mix.Error, ~r/unknown option/, fn -> Adapter.run(["X", "--nope"]) end
  end
end
