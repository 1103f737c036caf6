defmodule Snakepit.LimitsTest do
  # Real workers: one message-size limit both ways, and a per-worker memory
  # cap that turns a runaway allocation into a Python MemoryError.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  defp start(extra, pool \\ %{}) do
    AppPool.start!(
      [
        python_path: [AppPool.fixtures_dir()],
        pools: [
          Map.merge(
            %{name: :default, pool_size: 1, adapter_args: AppPool.fixture_adapter()},
            pool
          )
        ]
      ] ++ extra
    )
  end

  defp worker_pid do
    {:ok, %{"pid" => pid}} = Snakepit.execute("get_pid", %{})
    pid
  end

  test "a 64 MiB binary argument goes through with the default limit" do
    start([])
    data = :binary.copy(<<3>>, 64 * 1024 * 1024)

    assert {:ok, %{"len" => len, "first" => 3, "last" => 3}} =
             Snakepit.execute("nbytes", %{},
               binary_parameters: %{"data" => data},
               timeout: 60_000
             )

    assert len == 64 * 1024 * 1024
  end

  test "a call over max_message_bytes is refused before sending, naming the limit" do
    start(max_message_bytes: 1_000_000)
    pid = worker_pid()
    data = :binary.copy(<<1>>, 2_000_000)

    assert {:error, %Error{category: :validation, message: message}} =
             Snakepit.execute("nbytes", %{}, binary_parameters: %{"data" => data})

    assert message =~ "max_message_bytes (1000000)"
    assert message =~ "Snakepit.ZeroCopy"
    # Nothing reached the worker; it is the same and free.
    assert worker_pid() == pid
    assert Snakepit.get_stats().busy == 0
  end

  test "a reply over max_message_bytes comes back as an error naming the limit" do
    start(max_message_bytes: 1_000_000)

    assert {:error, %Error.PythonException{} = error} = Snakepit.execute("blob", %{mb: 2})
    assert error.message =~ "max_message_bytes (1000000)"
    assert {:ok, _} = Snakepit.execute("blob", %{mb: 0})
  end

  test "worker_memory_limit_mb turns a runaway allocation into OutOfMemory; the worker stays" do
    start([], %{worker_memory_limit_mb: 400})
    pid = worker_pid()
    assert {:ok, %{"held_mb" => 50}} = Snakepit.execute("allocate", %{mb: 50})
    assert {:error, %Error.OutOfMemory{} = oom} = Snakepit.execute("allocate", %{mb: 1_000})
    assert oom.message =~ "MemoryError" or Exception.message(oom) =~ "memory"
    assert worker_pid() == pid
  end
end

defmodule Snakepit.OOMKillTest do
  # The kernel's OOM killer, for real: the worker is moved into a memory
  # cgroup with a small limit and made to exceed it.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :memory_cgroup

  alias Snakepit.Error
  alias Snakepit.Test.{AppPool, MemoryCgroup}

  test "a worker killed by the OOM killer is reported as such and replaced" do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [%{name: :default, pool_size: 1, adapter_args: AppPool.fixture_adapter()}]
    )

    {:ok, %{"pid" => pid}} = Snakepit.execute("get_pid", %{})
    {:ok, cgroup} = MemoryCgroup.create(200)
    on_exit(fn -> MemoryCgroup.remove(cgroup) end)
    :ok = MemoryCgroup.add(cgroup, pid)

    assert {:error, %Error{category: :worker, details: details} = error} =
             Snakepit.execute("allocate", %{mb: 1_000})

    assert details.reason == :worker_crash
    assert details.exit_status == :oom_killed
    assert error.message =~ "OOM killer"

    assert {:ok, %{"pid" => new_pid}} = Snakepit.execute("get_pid", %{}, timeout: 30_000)
    assert new_pid != pid
  end
end
