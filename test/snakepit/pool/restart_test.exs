defmodule Snakepit.Pool.RestartTest do
  # Rolling restarts and reload on real workers: an adapter written into a
  # tmp dir on python_path is changed, and the pool picks the change up
  # while it serves.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  alias Snakepit.Pool
  alias Snakepit.Test.{AppPool, CallLoad}

  @adapter """
  import os
  import time

  from snakepit_bridge import BaseAdapter, tool

  VERSION = "{{version}}"


  class Adapter(BaseAdapter):
      @tool
      def version(self, ms: int = 0) -> dict:
          time.sleep(ms / 1000)
          return {"version": VERSION, "pid": os.getpid()}
  """

  defp write_adapter(dir, version, extra \\ "") do
    File.write!(
      Path.join(dir, "breathing_adapter.py"),
      String.replace(@adapter, "{{version}}", version) <> extra
    )
  end

  defp start!(dir, pool) do
    write_adapter(dir, "v1")

    pool =
      Map.merge(
        %{name: :default, adapter_args: ["--adapter", "breathing_adapter.Adapter"]},
        pool
      )

    AppPool.start!(python_path: [dir], pools: [pool])
  end

  defp listen(events), do: Snakepit.Test.Events.forward(events)

  defp version!(opts \\ []) do
    {:ok, %{"version" => v, "pid" => pid}} =
      Snakepit.execute("version", %{}, Keyword.merge([timeout: 30_000], opts))

    {v, pid}
  end

  # `n` callers in a loop until stopped: every result is kept.
  defp load(n), do: CallLoad.start(n, "version", %{ms: 10})
  defp stop_load(handle), do: CallLoad.stop(handle)

  # The fewest ready workers seen while `fun` runs.
  defp min_ready_during(fun) do
    parent = self()

    sampler =
      spawn_link(fn ->
        sample = fn sample, low ->
          low = min(low, length(Snakepit.list_workers()))

          receive do
            :stop -> send(parent, {:min_ready, low})
          after
            2 -> sample.(sample, low)
          end
        end

        sample.(sample, 1_000)
      end)

    result = fun.()
    send(sampler, :stop)
    assert_receive {:min_ready, low}, 5_000
    {result, low}
  end

  test "a rolling restart under load picks up changed code, one worker at a time",
       %{tmp_dir: dir} do
    start!(dir, %{pool_size: 3})
    listen([[:snakepit, :pool, :restart, :step], [:snakepit, :pool, :restart, :stop]])
    old_pids = AppPool.worker_os_pids()
    assert {"v1", _} = version!()

    background = load(4)
    write_adapter(dir, "v2")
    {result, low} = min_ready_during(fn -> Pool.restart(:default, rolling: true) end)
    assert result == :ok
    results = stop_load(background)

    # Served throughout, never below its size.
    assert low >= 3
    assert Enum.any?(results, &match?({:ok, %{"version" => "v1"}}, &1))

    for _ <- 1..3 do
      assert_receive {:event, [:snakepit, :pool, :restart, :step], %{duration_ms: _},
                      %{pool: :default, rolling: true, worker_id: _, replacement: _}}
    end

    assert_receive {:event, [:snakepit, :pool, :restart, :stop], %{replaced: 3},
                    %{result: :ok, reason: :restart}}

    # Every worker is new and runs the new code.
    new_pids = AppPool.worker_os_pids()
    assert length(new_pids) == 3 and MapSet.disjoint?(MapSet.new(old_pids), MapSet.new(new_pids))
    assert for(_ <- 1..6, do: elem(version!(), 0)) |> Enum.uniq() == ["v2"]
    assert %{size: 3, workers: 3} = Snakepit.get_stats()
  end

  test "a replacement that cannot start stops the restart; the old worker keeps serving",
       %{tmp_dir: dir} do
    start!(dir, %{pool_size: 2})
    old_pids = AppPool.worker_os_pids()
    write_adapter(dir, "v2", "\nraise RuntimeError('broken deploy')\n")

    ExUnit.CaptureLog.capture_log(fn ->
      assert {:error, %Snakepit.Error{} = e} = Pool.restart(:default)
      assert e.message =~ "failed to start"
    end)

    assert AppPool.worker_os_pids() == old_pids
    assert {"v1", _} = version!()

    # Fixed: the next restart goes through.
    write_adapter(dir, "v3")
    assert :ok = Pool.restart(:default, rolling: false)
    assert {"v3", _} = version!()
  end

  test "strict sessions pinned to a replaced worker hear once that it is gone",
       %{tmp_dir: dir} do
    start!(dir, %{pool_size: 1, affinity: :strict_queue})

    {:ok, %{"pid" => pid}} = Snakepit.execute_in_session("s1", "version", %{})
    assert :ok = Pool.restart(:default)

    assert {:error, %Snakepit.Error{details: %{reason: :session_worker_unavailable}}} =
             Snakepit.execute_in_session("s1", "version", %{})

    assert {:ok, %{"pid" => new_pid}} = Snakepit.execute_in_session("s1", "version", %{})
    assert new_pid != pid
  end

  test "bad options are refused in the caller" do
    assert {:error, %Snakepit.Error{category: :validation}} = Pool.restart(:default, rolling: 1)
    assert {:error, %Snakepit.Error{category: :validation}} = Pool.restart(:default, nope: true)
    assert {:error, %Snakepit.Error{category: :validation}} = Pool.restart(:default, :all)
    assert {:error, %Snakepit.Error{category: :validation}} = Pool.resize(:default, -1)
    assert {:error, %Snakepit.Error{category: :validation}} = Pool.resize(:default, 1.5)
  end

  test "reload: a change to a watched file restarts the pool with the new code",
       %{tmp_dir: dir} do
    start!(dir, %{pool_size: 2, reload: [interval_ms: 100]})
    listen([[:snakepit, :pool, :reload], [:snakepit, :pool, :restart, :stop]])
    assert {"v1", _} = version!()

    # Files that are not Python, and caches, are not watched.
    File.mkdir_p!(Path.join(dir, "__pycache__"))
    File.write!(Path.join([dir, "__pycache__", "breathing_adapter.py"]), "x = 1")
    File.write!(Path.join(dir, "notes.txt"), "not code")
    refute_receive {:event, [:snakepit, :pool, :reload], _, _}, 400

    path = Path.join(dir, "breathing_adapter.py")
    write_adapter(dir, "v2")

    assert_receive {:event, [:snakepit, :pool, :reload], %{files: 1},
                    %{pool: :default, files: [^path]}},
                   10_000

    assert_receive {:event, [:snakepit, :pool, :restart, :stop], %{replaced: 2},
                    %{result: :ok, reason: :reload, rolling: true}},
                   30_000

    assert for(_ <- 1..4, do: elem(version!(), 0)) |> Enum.uniq() == ["v2"]
  end
end
