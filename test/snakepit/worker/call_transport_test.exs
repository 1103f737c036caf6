defmodule Snakepit.CallTransportTest do
  # Real Python workers through the real native core, on both call
  # transports side by side: the lane (a Unix stream socket per worker)
  # and gRPC answer the same calls with the same results and errors.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  setup_all do
    adapter = AppPool.fixture_adapter()

    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{name: :lane, pool_size: 1, call_transport: :lane, adapter_args: adapter},
        %{name: :grpc, pool_size: 1, call_transport: :grpc, adapter_args: adapter},
        %{
          name: :laneless,
          pool_size: 1,
          call_transport: :lane,
          adapter_module: Snakepit.Test.LanelessAdapter,
          adapter_args: adapter
        }
      ]
    )
  end

  defp info(pool) do
    [id] = Snakepit.Pool.list_workers(Snakepit.Pool, pool)
    {:ok, pid} = Snakepit.Pool.Registry.get_worker_pid(id)
    Snakepit.GRPCWorker.get_info(pid)
  end

  test "each pool uses the transport it was given; a worker without a lane gets gRPC" do
    assert is_reference(info(:lane).lane)
    assert info(:grpc).lane == nil
    assert info(:laneless).lane == nil
  end

  test "once the VM is connected the lane's socket file is gone: nobody else can connect" do
    lanes = Path.wildcard(Path.join(Snakepit.OS.RuntimeDir.path(), "*.lane"))
    assert lanes == []
    # The gRPC socket of the same worker is still there.
    assert "unix:" <> sock = info(:lane).address
    assert File.exists?(sock)
  end

  test "lane replies are read by an ERTS port owned by the lane's reader, linked to its worker" do
    %{lane_reader: reader} = info = info(:lane)
    {:ok, worker} = Snakepit.Pool.Registry.get_worker_pid(info.id)
    {:links, links} = Process.info(reader, :links)
    assert worker in links
    assert [port] = Enum.filter(links, &is_port/1)
    # The socket driver's port: the schedulers poll its socket.
    assert {:name, ~c"tcp_inet"} = Port.info(port, :name)
    assert {:ok, %{"pid" => _}} = Snakepit.execute("get_pid", %{}, pool: :lane)
  end

  @tag :tmp_dir
  test "a worker whose lane reader dies is replaced: its waiting call fails at once, calls go on",
       %{tmp_dir: dir} do
    %{lane_reader: reader, id: id, os_pid: os_pid} = info(:lane)
    {:ok, worker} = Snakepit.Pool.Registry.get_worker_pid(id)
    ref = Process.monitor(worker)
    path = Path.join(dir, "marks")
    # A call that would run for 100 s is running when the reader dies.
    caller = Task.async(fn -> Snakepit.execute("busy", %{path: path}, pool: :lane) end)
    assert is_integer(AppPool.wait_until(fn -> File.exists?(path) end, 5_000))
    Process.exit(reader, :kill)
    assert_receive {:DOWN, ^ref, :process, ^worker, {:shutdown, {:lane_reader, :killed}}}, 5_000
    assert {:error, %Error{}} = Task.await(caller, 5_000)
    assert is_integer(AppPool.await_workers(3, without: [os_pid]))
    assert {:ok, %{"pid" => new_pid}} = Snakepit.execute("get_pid", %{}, pool: :lane)
    assert new_pid != os_pid
  end

  @tag :tmp_dir
  test "a worker process killed outright: its waiting call fails at once", %{tmp_dir: dir} do
    %{id: id, os_pid: os_pid} = info(:lane)
    {:ok, worker} = Snakepit.Pool.Registry.get_worker_pid(id)
    path = Path.join(dir, "marks")
    caller = Task.async(fn -> Snakepit.execute("busy", %{path: path}, pool: :lane) end)
    assert is_integer(AppPool.wait_until(fn -> File.exists?(path) end, 5_000))
    # No terminate/2 runs: the lane's reader closes the lane.
    Process.exit(worker, :kill)
    assert {:error, %Error{}} = Task.await(caller, 5_000)
    assert is_integer(AppPool.await_workers(3, without: [os_pid]))
  end

  test "a worker whose lane closes while its Python process runs is replaced" do
    %{os_pid: os_pid, id: id} = info(:lane)
    {:ok, worker} = Snakepit.Pool.Registry.get_worker_pid(id)
    ref = Process.monitor(worker)
    assert {:error, %Error{}} = Snakepit.execute("corrupt_lane", %{}, pool: :lane)
    assert_receive {:DOWN, ^ref, :process, ^worker, {:shutdown, :lane_closed}}, 5_000
    assert is_integer(AppPool.await_workers(3, without: [os_pid]))
    assert {:ok, %{"pid" => new_pid}} = Snakepit.execute("get_pid", %{}, pool: :lane)
    assert new_pid != os_pid
  end

  @tag :tmp_dir
  test "when its worker's process dies the lane closes: the waiting call fails, the reader ends",
       %{tmp_dir: dir} do
    %{os_pid: os_pid, lane_reader: reader} = info(:lane)
    ref = Process.monitor(reader)
    path = Path.join(dir, "marks")
    caller = Task.async(fn -> Snakepit.execute("busy", %{path: path}, pool: :lane) end)
    # The call runs in the worker before the worker is killed.
    assert is_integer(AppPool.wait_until(fn -> File.exists?(path) end, 5_000))
    Snakepit.ProcessKiller.kill_process_group(os_pid, :sigkill)
    assert_receive {:DOWN, ^ref, :process, ^reader, :normal}, 5_000

    assert {:error, %Error{category: :worker, details: %{reason: :worker_crash}}} =
             Task.await(caller, 10_000)

    assert is_integer(AppPool.await_workers(3, without: [os_pid]))
  end

  for pool <- [:lane, :grpc, :laneless] do
    describe "#{pool}" do
      @describetag pool: pool

      test "results, Python errors and caller errors", %{pool: pool} do
        assert {:ok, %{"pid" => pid}} = Snakepit.execute("get_pid", %{}, pool: pool)
        # The call ran in this pool's worker, over this pool's transport.
        assert pid == info(pool).os_pid

        assert {:error, %Error{category: :validation, details: %{kind: "unknown_tool"}}} =
                 Snakepit.execute("no_such_tool", %{}, pool: pool)

        assert {:error, %Error{category: :validation, details: %{kind: "streaming_tool"}}} =
                 Snakepit.execute("ticks", %{path: "/dev/null"}, pool: pool)

        assert {:error, %Error{category: :validation}} =
                 Snakepit.execute("get_pid", %{bad: self()}, pool: pool)
      end

      test "messages many frames long arrive whole, both ways", %{pool: pool} do
        data = :crypto.strong_rand_bytes(3 * 1024 * 1024 + 17)

        assert {:ok, %{"len" => len, "first" => first, "last" => last}} =
                 Snakepit.execute("nbytes", %{},
                   binary_parameters: %{"data" => data},
                   pool: pool
                 )

        assert {len, first, last} == {byte_size(data), :binary.first(data), :binary.last(data)}

        assert {:ok, blob} = Snakepit.execute("blob", %{mb: 3}, pool: pool)
        assert blob == :binary.copy(<<7>>, 3 * 1024 * 1024)
      end

      test "a call past its deadline times out with how it was stopped", %{pool: pool} do
        dir = Path.join(System.tmp_dir!(), "transport-#{System.unique_integer([:positive])}")
        File.mkdir_p!(dir)
        on_exit(fn -> File.rm_rf(dir) end)

        assert {:error, %Error{category: :timeout, details: %{stop: :interrupted}}} =
                 Snakepit.execute("busy", %{path: Path.join(dir, "busy")},
                   pool: pool,
                   timeout: 300
                 )

        # The worker is the same and answers at once.
        assert {:ok, %{"pid" => _}} = Snakepit.execute("get_pid", %{}, pool: pool)
      end

      test "a stream arrives whole and in order; :halt stops it", %{pool: pool} do
        dir = Path.join(System.tmp_dir!(), "transport-#{System.unique_integer([:positive])}")
        File.mkdir_p!(dir)
        on_exit(fn -> File.rm_rf(dir) end)
        path = Path.join(dir, "ticks")
        test = self()

        assert :ok =
                 Snakepit.execute_stream(
                   "counter",
                   %{path: path},
                   fn chunk ->
                     send(test, {:tick, chunk})
                     if chunk["tick"] == 99, do: :halt, else: :ok
                   end,
                   pool: pool
                 )

        ticks = collect_ticks([])
        assert Enum.map(ticks, & &1["tick"]) == Enum.to_list(0..99)
        # The halted producer stops; the worker takes the next call.
        assert AppPool.wait_until(fn -> "stopped" in marks(path) end, 10_000) != :timeout
        assert {:ok, _} = Snakepit.execute("get_pid", %{}, pool: pool)
      end
    end
  end

  defp collect_ticks(acc) do
    receive do
      {:tick, chunk} -> collect_ticks([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp marks(path) do
    case File.read(path) do
      {:ok, text} -> String.split(text, "\n", trim: true)
      {:error, :enoent} -> []
    end
  end
end
