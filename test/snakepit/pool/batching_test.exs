defmodule Snakepit.Pool.BatchingTest do
  # Dynamic batching and execute_many on real workers
  # (test/fixtures/python/pool_adapters.py, BatchTestAdapter): answers
  # reach the right callers, per-item errors and deadlines, a worker crash
  # mid-batch, batched and ordinary tools on one pool.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.{Error, Telemetry}
  alias Snakepit.Test.AppPool

  defp start!(size, extra \\ []) do
    AppPool.start!(
      [
        pool_size: size,
        python_path: [AppPool.fixtures_dir()],
        adapter_args: AppPool.fixture_adapter("BatchTestAdapter")
      ] ++ extra
    )

    assert AppPool.await_workers(size) != :timeout
  end

  defp tmp(name) do
    dir = Path.join(System.tmp_dir!(), "snakepit-batching-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    Path.join(dir, name)
  end

  # Telemetry of the batches that leave, sent to the test process.
  defp watch_batches do
    parent = self()
    id = "batching-test-#{System.unique_integer([:positive])}"

    :ok =
      Telemetry.attach(
        id,
        [:snakepit, :pool, :batch],
        fn _event, measurements, meta, _ -> send(parent, {:batch, measurements, meta}) end,
        nil
      )

    on_exit(fn -> Telemetry.detach(id) end)
  end

  defp batches(acc \\ []) do
    receive do
      {:batch, m, meta} -> batches([{m, meta} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp concurrently(inputs, fun) do
    inputs
    |> Task.async_stream(fun, max_concurrency: length(inputs), timeout: 30_000)
    |> Enum.map(fn {:ok, result} -> result end)
  end

  test "concurrent callers each get their own answer, from shared batches" do
    start!(2)
    watch_batches()

    results =
      concurrently(Enum.to_list(1..200), fn i ->
        {i, Snakepit.execute("embed", %{x: i})}
      end)

    for {i, result} <- results do
      assert {:ok, %{"x" => ^i, "double" => double}} = result
      assert double == 2 * i
    end

    sizes = for {:ok, %{"n" => n}} <- Enum.map(results, &elem(&1, 1)), do: n
    assert Enum.max(sizes) > 1 and Enum.max(sizes) <= 16

    sent = batches()
    assert Enum.sum(for {m, _} <- sent, do: m.size) == 200
    assert length(sent) < 200

    for {m, meta} <- sent do
      assert meta.command == "embed" and meta.pool == :default and meta.reason in [:full, :delay]
      assert m.size <= 16 and m.expired == 0 and is_integer(m.delay_us)
    end

    # A batch is one request to the pool, and nothing stays leased.
    stats = Snakepit.get_stats()
    assert stats.busy == 0 and stats.queued == 0
    assert stats.requests == length(sent)
  end

  test "an exception in an item's result slot fails that item alone" do
    start!(2)

    results =
      concurrently(Enum.to_list(1..40), fn i ->
        {i, Snakepit.execute("embed", %{x: i, fail: rem(i, 4) == 0})}
      end)

    for {i, result} <- results do
      if rem(i, 4) == 0 do
        assert {:error, %Snakepit.Error.ValueError{message: message}} = result
        assert message =~ "bad item #{i}"
      else
        assert {:ok, %{"x" => ^i}} = result
      end
    end
  end

  test "bytes results, streams and batched tools called with bad arguments" do
    start!(1)

    assert [{:ok, <<3, 3, 3>>}, {:ok, <<5, 5, 5, 5, 5>>}] =
             concurrently([3, 5], fn n -> Snakepit.execute("blobs", %{n: n}) end)

    # A stream is never batched: a batched tool streams its one result.
    parent = self()
    :ok = Snakepit.execute_stream("embed", %{x: 4}, &send(parent, {:chunk, &1}))
    assert_received {:chunk, %{"double" => 8, "is_final" => true}}

    # A missing argument is that item's Python error.
    assert {:error, %Snakepit.Error.KeyError{}} = Snakepit.execute("embed", %{y: 1})
  end

  test "an item whose deadline passes while its batch waits is dropped from it" do
    start!(1)
    watch_batches()
    gate = tmp("gate")
    started = tmp("started")

    # The only worker is held by a first batch.
    first =
      Task.async(fn -> Snakepit.execute("held", %{path: gate, started: started, x: 0}) end)

    assert AppPool.wait_until(fn -> File.exists?(started) end, 10_000) != :timeout
    assert_receive {:batch, %{size: 1}, %{command: "held"}}, 5_000

    # A second batch gathers while it waits for the worker: a long call
    # first, then a short one whose deadline passes meanwhile.
    long = Task.async(fn -> Snakepit.execute("held", %{path: gate, x: 1}, timeout: 20_000) end)
    Process.sleep(50)
    short = Task.async(fn -> Snakepit.execute("held", %{path: gate, x: 2}, timeout: 200) end)

    assert {:error, %Error{category: :timeout}} = Task.await(short, 5_000)
    File.write!(gate, "")

    assert {:ok, %{"x" => 0}} = Task.await(first, 10_000)
    # The short call did not ride along.
    assert {:ok, %{"x" => 1, "n" => 1}} = Task.await(long, 10_000)
    assert_receive {:batch, %{size: 1, expired: 1}, %{command: "held"}}, 5_000
  end

  test "a call that joins after its batch asked for a worker keeps its own, later deadline" do
    start!(1)
    gate = tmp("gate")
    started = tmp("started")

    first =
      Task.async(fn -> Snakepit.execute("held", %{path: gate, started: started, x: 0}) end)

    assert AppPool.wait_until(fn -> File.exists?(started) end, 10_000) != :timeout

    # The batch's request for a worker runs out with its first (short)
    # call; the later call, with more time, is not failed with it.
    short = Task.async(fn -> Snakepit.execute("held", %{path: gate, x: 1}, timeout: 200) end)
    Process.sleep(50)
    long = Task.async(fn -> Snakepit.execute("held", %{path: gate, x: 2}, timeout: 20_000) end)

    assert {:error, %Error{category: :timeout}} = Task.await(short, 5_000)
    Process.sleep(100)
    File.write!(gate, "")
    assert {:ok, %{"x" => 0}} = Task.await(first, 10_000)
    assert {:ok, %{"x" => 2, "n" => 1}} = Task.await(long, 10_000)
  end

  test "a worker crash mid-batch fails each item with a structured error; idempotent items are retried" do
    start!(2, crash_barrier: [enabled: true, max_retries: 1, backoff_ms: [10]])
    marker = tmp("crashed")

    items = [
      %{x: 1, crash: true, path: marker},
      %{x: 2},
      %{x: 3, idempotent: true},
      %{x: 4, idempotent: true}
    ]

    results =
      concurrently(items, fn args -> {args.x, Snakepit.execute("crash_on", args)} end)
      |> Map.new()

    crashed_pid = marker |> File.read!() |> String.to_integer()

    for x <- [1, 2] do
      assert {:error, %Error{category: :worker, details: details}} = results[x]
      assert details.reason == :worker_crash and details.crash.classification == :killed
    end

    for x <- [3, 4] do
      assert {:ok, %{"x" => ^x, "pid" => pid}} = results[x]
      assert pid != crashed_pid
    end

    # The pool serves on, with a replacement.
    assert AppPool.await_workers(2, without: [crashed_pid]) != :timeout
    assert {:ok, %{"x" => 5}} = Snakepit.execute("crash_on", %{x: 5})
  end

  test "the batcher logs and drops what it does not understand" do
    start!(1)
    %{batcher: batcher} = Snakepit.Pool.Names.server_info(Process.whereis(Snakepit.Pool))
    ref = Process.monitor(batcher)

    for message <- [
          :junk,
          {:batch_item, :default, "embed", %{}, {self(), %{}, nil, false, :infinity}},
          {:batch_item, :default, "embed", %{max_batch_size: 0, max_batch_delay_ms: 1}, {}},
          {:batch_item, "default", 1, nil, nil},
          {:take, 12_345, self()},
          {:batch_due, :nope}
        ],
        do: send(batcher, message)

    assert {:error, %Error{category: :validation}} = GenServer.call(batcher, :what)
    GenServer.cast(batcher, :what)
    assert {:ok, %{"x" => 7}} = Snakepit.execute("embed", %{x: 7})
    refute_received {:DOWN, ^ref, :process, _, _}
  end

  test "batched and ordinary tools share a pool" do
    start!(2)

    results =
      concurrently(Enum.to_list(1..120), fn i ->
        case rem(i, 3) do
          0 -> {i, :embed, Snakepit.execute("embed", %{x: i})}
          1 -> {i, :echo, Snakepit.execute("echo", %{x: i})}
          2 -> {i, :pid, Snakepit.execute("get_pid", %{})}
        end
      end)

    for {i, kind, result} <- results do
      case kind do
        :embed -> assert {:ok, %{"x" => ^i, "double" => _}} = result
        :echo -> assert {:ok, %{"x" => ^i}} = result
        :pid -> assert {:ok, %{"pid" => _}} = result
      end
    end

    assert Snakepit.get_stats().busy == 0
  end

  test "execute_many: results in order, each item its own error" do
    start!(2)
    items = for i <- 1..500, do: %{x: i, fail: rem(i, 50) == 0}
    results = Snakepit.execute_many("echo", items)
    assert length(results) == 500

    for {result, i} <- Enum.with_index(results, 1) do
      if rem(i, 50) == 0 do
        assert {:error, %Snakepit.Error.KeyError{message: message}} = result
        assert message =~ "no #{i}"
      else
        assert {:ok, %{"x" => ^i}} = result
      end
    end

    # Both workers took part; a few messages carried them all.
    pids = for {:ok, %{"pid" => pid}} <- results, into: MapSet.new(), do: pid
    assert MapSet.size(pids) == 2
    assert Snakepit.get_stats().requests <= 4

    # A batched tool gets its chunks as lists of at most max_batch_size.
    results = Snakepit.execute_many("embed", for(i <- 1..100, do: %{x: i}), chunk_size: 40)

    for {{:ok, %{"x" => x, "double" => double, "n" => n}}, i} <- Enum.with_index(results, 1) do
      assert x == i and double == 2 * i and n <= 16
    end

    assert length(results) == 100
    assert Snakepit.execute_many("echo", []) == []
  end

  test "execute_many refuses bad input in the caller, item by item where it can" do
    start!(1)

    for {items, opts, option} <- [
          {:nope, [], :items},
          {[%{x: 1} | :improper], [], :items},
          {[%{x: 1}], [chunk_size: 0], :chunk_size},
          {[%{x: 1}], [timeout: -5], :timeout},
          {[%{x: 1}], [session_id: "s"], :session_id},
          {[%{x: 1}], [binary_parameters: %{"a" => "b"}], :binary_parameters},
          {[%{x: 1}], :not_a_list, :opts}
        ] do
      assert {:error, %Error{category: :validation, details: details}} =
               Snakepit.execute_many("echo", items, opts)

      assert details.option == option
    end

    assert {:error, %Error{category: :validation}} = Snakepit.execute_many("", [%{}])

    assert [{:ok, %{"x" => 1}}, {:error, %Error{category: :validation} = e}, {:ok, %{"x" => 3}}] =
             Snakepit.execute_many("echo", [%{x: 1}, [x: 2], %{x: 3}])

    assert e.details.index == 1

    # A streaming tool or an unknown one fails every item, as a call would.
    assert [{:error, %Error{category: :validation}}, {:error, %Error{category: :validation}}] =
             Snakepit.execute_many("numbers", [%{}, %{}])

    assert [{:error, %Error{category: :validation}}] = Snakepit.execute_many("nope", [%{}])
    assert Snakepit.get_stats().busy == 0
  end

  test "execute_many: a crash fails the chunk's items; idempotent ones are retried" do
    start!(2, crash_barrier: [enabled: true, max_retries: 1, backoff_ms: [10]])
    marker = tmp("crashed")

    items = [%{x: 1, crash: true, path: marker}, %{x: 2, idempotent: true}, %{x: 3}]
    results = Snakepit.execute_many("crash_on", items, chunk_size: 3)

    assert [{:error, %Error{details: %{reason: :worker_crash}}}, {:ok, %{"x" => 2}}, third] =
             results

    assert {:error, %Error{details: %{reason: :worker_crash}}} = third

    # With idempotent: true for the whole list, every item is retried.
    marker2 = tmp("crashed-again")

    assert [{:ok, _}, {:ok, _}] =
             Snakepit.execute_many(
               "crash_on",
               [%{x: 1, crash: true, path: marker2}, %{x: 2}],
               idempotent: true,
               chunk_size: 2
             )
  end
end
