defmodule Snakepit.AdapterTest do
  # adapter_module decides how a worker starts, with real workers.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.{AppPool, EntryScriptAdapter}

  defmodule MissingExecutable do
    @behaviour Snakepit.Adapter
    def executable_path, do: "/nonexistent/interpreter"
    def script_path, do: "x.py"
    def script_args, do: []
  end

  test "argv: a module runs with -m, a file as a script, then the adapter's and the pool's args" do
    assert ["-m", "snakepit_bridge.server", "--adapter" | _] =
             Snakepit.Adapter.argv(Snakepit.Adapters.GRPCPython, [], "worker-id": "w")

    assert [script, "--adapter", "pool_adapters.PoolTestAdapter", "--x", "--worker-id", "w"] =
             Snakepit.Adapter.argv(EntryScriptAdapter, ["--x"], "worker-id": "w", unset: nil)

    assert String.ends_with?(script, "custom_entry.py")
  end

  test "a pool's adapter_module starts its workers its own way" do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [%{name: :default, pool_size: 1, adapter_module: EntryScriptAdapter}]
    )

    assert {:ok, %{"value" => "custom_entry.py"}} =
             Snakepit.execute("getenv", %{name: "SNAKEPIT_CUSTOM_ENTRY"})

    [id] = Snakepit.list_workers()
    {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
    assert meta.adapter_module == EntryScriptAdapter
    assert File.read!("/proc/#{meta.os_pid}/cmdline") =~ "custom_entry.py"
  end

  test "an adapter whose executable is missing fails the pool with the reason" do
    :ok =
      AppPool.restart(pools: [%{name: :default, pool_size: 1, adapter_module: MissingExecutable}])

    assert {:error, %Snakepit.Error{category: :pool} = error} =
             Snakepit.Pool.await_ready(Snakepit.Pool, 10_000)

    assert error.message =~ "/nonexistent/interpreter does not exist"
  end
end
