defmodule Snakepit.CallerIsolationTest do
  # One caller's mistake stays that caller's, with real Python workers
  # through the real native core: bad options on every entry point while
  # other callers' calls are in flight, malformed messages to the shared
  # processes, streams against their deadlines, producers that die, a
  # worker flooding its stdout, and calls cut short by a shutdown.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag :tmp_dir

  import ExUnit.CaptureLog

  alias Snakepit.{Error, GRPCWorker}
  alias Snakepit.Bridge.SessionStore
  alias Snakepit.Pool.Checkout
  alias Snakepit.Test.AppPool
  alias Snakepit.Worker.Output

  setup_all do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [%{name: :default, pool_size: 2, adapter_args: AppPool.fixture_adapter()}]
    )
  end

  # Both workers up and free: an earlier test may have replaced one, or left
  # a call to be stopped.
  setup do
    assert :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 30_000)

    assert AppPool.wait_until(
             fn ->
               length(Snakepit.list_workers()) == 2 and Snakepit.get_stats().available == 2
             end,
             30_000
           ) != :timeout

    :ok
  end

  # What one caller's mistake must not touch.
  defp shared do
    %{
      app: Process.whereis(Snakepit.Supervisor),
      pool: Process.whereis(Snakepit.Pool),
      store: Process.whereis(SessionStore),
      tools: Process.whereis(Snakepit.Bridge.ToolRegistry),
      workers: worker_pids(),
      os_pids: AppPool.worker_os_pids()
    }
  end

  defp worker_pids do
    Registry.select(Snakepit.Pool.Registry, [{{:_, :"$1", :_}, [], [:"$1"]}]) |> Enum.sort()
  end

  defp started?, do: List.keymember?(Application.started_applications(), :snakepit, 0)

  # Holds every worker with a call that waits for `gate`; returns the tasks.
  defp hold_all(dir) do
    gate = Path.join(dir, "gate")

    tasks =
      for i <- 1..2 do
        started = Path.join(dir, "started_#{i}")

        task =
          Task.async(fn ->
            Snakepit.execute("hold", %{path: gate, started: started}, timeout: 120_000)
          end)

        {task, started}
      end

    assert AppPool.wait_until(fn -> Enum.all?(tasks, &File.exists?(elem(&1, 1))) end, 20_000) !=
             :timeout

    {gate, Enum.map(tasks, &elem(&1, 0))}
  end

  # Each entry point, as a function of the options (and the session id).
  defp entry_points do
    cb = fn _chunk -> :ok end

    [
      {"Snakepit.execute/3", fn opts -> Snakepit.execute("get_pid", %{}, opts) end},
      {"Snakepit.execute_stream/4",
       fn opts -> Snakepit.execute_stream("ticks", %{path: "/dev/null"}, cb, opts) end},
      {"Snakepit.execute_in_session/4",
       fn opts -> Snakepit.execute_in_session("other", "get_pid", %{}, opts) end},
      {"Snakepit.execute_in_session_stream/5",
       fn opts ->
         Snakepit.execute_in_session_stream("other", "ticks", %{path: "/dev/null"}, cb, opts)
       end},
      {"Snakepit.Pool.execute/3", fn opts -> Snakepit.Pool.execute("get_pid", %{}, opts) end},
      {"Snakepit.Pool.execute_stream/4",
       fn opts -> Snakepit.Pool.execute_stream("ticks", %{path: "/dev/null"}, cb, opts) end}
    ]
  end

  # The options that crashed shared processes or raised, and more. A call
  # with any of them must queue here (every worker is held): the checks
  # that matter run before that.
  @bad_opts [
    [avoid: :x],
    [avoid: [1]],
    [queue_timeout: -1],
    [queue_timeout: 1.5],
    [queue_timeout: 2 ** 70],
    [session_id: 123],
    [session_id: :atom],
    [session_id: ""],
    [session_id: <<255, 0>>],
    [affinity: :bogus],
    [pool: "default"],
    [pool: 123],
    [pool: {1, 2, 3}],
    [pool: {"x", :y}],
    [timeout: 2 ** 70],
    [timeout: 0],
    [timeout: -5],
    [deadline_ms: 1.5],
    [deadline_ms: 2 ** 70],
    [metadata: "x"],
    [metadata: %{"k" => 1}],
    [binary_parameters: %{"k" => :v}],
    [idempotent: "yes"],
    [correlation_id: 42],
    [traceparent: 1],
    [node: "n@h"],
    [require: [gpu: true]],
    [avoid_nodes: :n],
    :not_a_list,
    [1, 2]
  ]

  test "bad options on every entry point: a validation error, and nobody else notices",
       %{tmp_dir: dir} do
    # A session pinned to its worker, and every worker busy with another
    # caller's call.
    assert {:ok, %{"pid" => pinned_os_pid}} =
             Snakepit.execute_in_session("pinned", "get_pid", %{})

    assert AppPool.wait_until(fn -> SessionStore.last_worker("pinned") != nil end, 5_000) !=
             :timeout

    pin = SessionStore.last_worker("pinned")
    {gate, held} = hold_all(dir)
    before = shared()

    for {name, call} <- entry_points(), opts <- @bad_opts do
      # The session variants put their own session over the options'.
      opts =
        if name =~ "in_session" and is_list(opts) and Keyword.keyword?(opts),
          do: Keyword.delete(opts, :session_id),
          else: opts

      if opts != [] do
        assert {:error, %Error{category: :validation} = error} = call.(opts),
               "#{name} with #{inspect(opts)}"

        assert is_binary(error.message)
        assert shared() == before, "#{name} with #{inspect(opts)} touched a shared process"
      end
    end

    for session <- [123, :atom, "", nil, <<255>>] do
      assert {:error, %Error{category: :validation}} =
               Snakepit.execute_in_session(session, "get_pid", %{})

      assert {:error, %Error{category: :validation}} =
               Snakepit.execute_in_session_stream(session, "ticks", %{}, fn _ -> :ok end)
    end

    assert shared() == before
    assert SessionStore.last_worker("pinned") == pin

    # The other callers' calls finish normally, on the same workers.
    File.write!(gate, "")
    results = Task.await_many(held, 30_000)
    assert Enum.all?(results, &match?({:ok, %{"pid" => _}}, &1))
    assert Enum.sort(Enum.map(results, fn {:ok, %{"pid" => p}} -> p end)) == before.os_pids

    # The session still goes to its worker.
    assert {:ok, %{"pid" => ^pinned_os_pid}} =
             Snakepit.execute_in_session("pinned", "get_pid", %{}, affinity: :strict_fail_fast)

    assert shared() == before
  end

  test "50 bad calls in a row and malformed messages leave the application running and the same processes" do
    before = shared()
    calls = entry_points()

    # (session ids are refused by the plain entry points; the session
    # variants put their own over the options')
    bad = Enum.reject(@bad_opts, &match?([session_id: _], &1))

    for i <- 1..50 do
      {name, call} = Enum.at(calls, rem(i, length(calls)))
      opts = Enum.at(bad, rem(i, length(bad)))
      assert {:error, %Error{category: :validation}} = call.(opts), "#{name} #{inspect(opts)}"
      # The ones that crashed the pool and the session store, every time.
      assert {:error, %Error{category: :validation}} = Snakepit.execute("x", %{}, avoid: :x)
      assert {:error, %Error{category: :validation}} = Snakepit.execute("x", %{}, session_id: i)
    end

    # Messages nobody sends on purpose, straight to the shared processes.
    capture_log(fn ->
      for name <- [Snakepit.Pool, SessionStore, Snakepit.Bridge.ToolRegistry] do
        send(name, {:garbage, make_ref()})
        GenServer.cast(name, {:garbage, 1})
        assert {:error, _} = GenServer.call(name, {:garbage, 2})
      end

      GenServer.cast(SessionStore, {:worker, 123, "w"})
      GenServer.cast(SessionStore, {:worker, "s", 7})
      assert {:error, _} = GenServer.call(SessionStore, {:create, 123, []})
      assert {:error, _} = GenServer.call(SessionStore, {:create, "s", [metadata: "x"]})
      assert {:error, _} = GenServer.call(SessionStore, {:update, "s", :not_a_fun})
      send(Snakepit.Pool, {:checkin, :no_such_pool, make_ref(), :ok})
      send(Snakepit.Pool, {:queue_timeout, :no_such_pool, make_ref(), 5})
      send(Snakepit.Pool, {:worker_ready, :no_such_pool, %{}})
      assert {:error, _} = GenServer.call(Snakepit.Pool, {:checkout, %{ref: make_ref()}})

      assert {:error, _} =
               GenServer.call(Snakepit.Pool, {:checkout, %{pool: nil, avoid: :x, ref: 1}})

      assert {:error, _} = GenServer.call(Snakepit.Pool, {:await, :bogus, :all})
      assert {:error, _} = GenServer.call(Snakepit.Bridge.ToolRegistry, {:insert, [:x]})
      # Each answered in order: everything above was handled by now.
      assert is_map(Snakepit.get_stats())
      assert is_map(SessionStore.get_stats())
    end)

    assert started?()
    assert shared() == before
    assert {:ok, %{"pid" => _}} = Snakepit.execute("get_pid", %{})
  end

  test "a slow callback cannot stretch a stream past its deadline", %{tmp_dir: dir} do
    timeout = 1_500
    per_chunk = 300
    path = Path.join(dir, "ticks")
    me = self()

    started = System.monotonic_time(:millisecond)

    task =
      Task.async(fn ->
        Snakepit.execute_stream(
          "ticks",
          %{path: path},
          fn chunk ->
            send(me, {:chunk, chunk})
            # The callback's own work, not a wait for anything.
            Process.sleep(per_chunk)
          end,
          timeout: timeout
        )
      end)

    # ticks never ends by itself: only the deadline ends it.
    assert {:ok, {:error, %Error{category: :timeout} = error}} =
             Task.yield(task, timeout + per_chunk + 5_000) || Task.shutdown(task, :brutal_kill)

    elapsed = System.monotonic_time(:millisecond) - started
    assert_received {:chunk, %{"n" => _}}
    assert error.message =~ "did not finish in time"
    # At most one callback past the deadline (plus scheduling slack).
    assert elapsed < timeout + per_chunk + 700, "the stream ended after #{elapsed} ms"
  end

  test "a producer that dies by SystemExit or BaseException ends the stream at once, naming it" do
    for {how, type} <- [{"exit", "SystemExit"}, {"base", "BaseException"}] do
      {us, result} =
        :timer.tc(fn ->
          Snakepit.execute_stream("dies_midway", %{how: how}, fn _ -> :ok end, timeout: 60_000)
        end)

      IO.puts("\n[dying producer] #{type}: error after #{div(us, 1000)} ms (budget 60000 ms)")
      assert {:error, error} = result
      assert Exception.message(error) =~ type or inspect(error) =~ type
      # The budget was a minute: the error came from the producer's end.
      assert div(us, 1000) < 5_000, "#{how}: the error came after #{div(us, 1000)} ms"
    end

    # Its worker kept serving.
    assert length(Snakepit.list_workers()) == 2
  end

  test "a stream whose worker dies ends at once with a crash error" do
    os_pid_of =
      Map.new(Snakepit.list_workers(), fn id ->
        {:ok, %{os_pid: os_pid}} = Snakepit.Pool.Registry.get_worker_metadata(id)
        {id, os_pid}
      end)

    {us, result} =
      :timer.tc(fn ->
        Snakepit.execute_stream("dies_midway", %{how: "kill"}, fn _ -> :ok end, timeout: 60_000)
      end)

    IO.puts("\n[dying producer] worker killed: error after #{div(us, 1000)} ms (budget 60000 ms)")

    assert {:error, %Error{category: :worker, details: %{reason: :worker_crash} = details}} =
             result

    assert div(us, 1000) < 5_000, "the error came after #{div(us, 1000)} ms"
    killed = Map.fetch!(os_pid_of, details.worker_id)
    assert AppPool.await_workers(2, without: [killed], timeout: 30_000) != :timeout
  end

  test "a bad zero-copy ref from a tool is a validation error, without the crash wait" do
    before = shared()
    {us, result} = :timer.tc(fn -> Snakepit.execute("bad_ref", %{}) end)
    assert {:error, %Error{category: :validation, message: message}} = result
    assert message =~ "bad zero-copy ref"
    assert div(us, 1000) < Checkout.crash_confirm_ms()
    assert shared() == before
  end

  @flood_mib 100

  test "a 100 MiB binary flood on a worker's stdout: its mailbox stays bounded, the VM's memory too" do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      Snakepit.Telemetry.attach(
        id,
        [:snakepit, :worker, :output_dropped],
        fn _, %{count: n}, meta, _ -> send(test, {:dropped, n, meta.worker_id}) end,
        nil
      )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
    :erlang.garbage_collect()
    workers = worker_pids()
    base_memory = :erlang.memory(:total)
    sampler = spawn_link(fn -> sample(workers, %{mailbox: 0, memory: 0, info_ms: 0}) end)
    previous_level = Logger.level()
    Logger.configure(level: :debug)

    {{us, result}, log} =
      with_log([level: :debug], fn ->
        :timer.tc(fn -> Snakepit.execute("flood", %{mib: @flood_mib}, timeout: 300_000) end)
      end)

    Logger.configure(level: previous_level)
    send(sampler, {:stop, self()})
    assert_receive {:sampled, peak}, 5_000

    dropped =
      receive do
        {:dropped, n, _worker} -> n
      after
        5_000 -> 0
      end

    IO.puts(
      "\n[flood] #{@flood_mib} MiB in #{div(us, 1000)} ms: peak worker mailbox #{peak.mailbox} " <>
        "(window #{Output.window()}), peak VM memory +#{div(peak.memory - base_memory, 1_048_576)} MiB " <>
        "over #{div(base_memory, 1_048_576)} MiB, slowest get_info #{peak.info_ms} ms, " <>
        "first drop report #{dropped} lines"
    )

    assert {:ok, %{"bytes" => bytes}} = result
    assert bytes == @flood_mib * 1024 * 1024
    assert dropped > 0

    # Bounded: the window and a few control messages, never the flood.
    assert peak.mailbox <= Output.window() + 16
    assert peak.memory - base_memory < 64 * 1_048_576
    # The worker kept handling its own messages during the flood.
    assert peak.info_ms < 1_000
    # Lines were logged, printable, without a formatter failure.
    assert log =~ "[default_worker_"
    refute log =~ "FORMATTER"
    assert String.valid?(log)
    # And nothing else was touched.
    assert length(Snakepit.list_workers()) == 2
  end

  # Samples the workers' mailboxes, the VM's memory and how long a worker
  # takes to answer, until told to stop.
  defp sample(workers, peak) do
    receive do
      {:stop, from} -> send(from, {:sampled, peak})
    after
      2 ->
        mailbox =
          workers
          |> Enum.map(&(Process.info(&1, :message_queue_len) || {:message_queue_len, 0}))
          |> Enum.map(&elem(&1, 1))
          |> Enum.max()

        {us, _} = :timer.tc(fn -> Enum.each(workers, &GRPCWorker.get_info/1) end)

        sample(workers, %{
          mailbox: max(peak.mailbox, mailbox),
          memory: max(peak.memory, :erlang.memory(:total)),
          info_ms: max(peak.info_ms, div(us, 1000))
        })
    end
  end

  test "a call in flight when Snakepit stops is a shutdown error, not a crash", %{tmp_dir: dir} do
    {_gate, [task | others]} = hold_all(dir)
    started = System.monotonic_time(:millisecond)
    :ok = Application.stop(:snakepit)

    for t <- [task | others] do
      assert {:error, %Error{category: :pool, details: %{reason: :shutdown}} = error} =
               Task.await(t, 30_000)

      assert error.message =~ "shutting down"
      refute error.message =~ "crashed"
    end

    IO.puts(
      "\n[shutdown] in-flight calls answered #{System.monotonic_time(:millisecond) - started} ms " <>
        "after Application.stop began"
    )

    {:ok, _} = Application.ensure_all_started(:snakepit)
    assert :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 30_000)
  end
end
