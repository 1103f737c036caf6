defmodule Snakepit.ExecuteTest do
  # Real Python workers through the real native core.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  # The shipped ShowcaseAdapter plus test-only tools (rendezvous).
  setup_all do
    AppPool.start!(
      pool_size: 2,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
    )

    both_workers!(30_000)
  end

  # await_ready answers once the pool can serve (its first worker is up),
  # and after another test killed a worker the pool may still be replacing
  # it; some tests need both workers.
  # Both workers listed and free: a call an earlier test abandoned (a halted
  # stream, a timeout) holds its slot until the worker confirms it stopped.
  defp both_workers!(timeout \\ 10_000) do
    assert AppPool.wait_until(
             fn ->
               length(Snakepit.list_workers()) == 2 and Snakepit.get_stats().available == 2
             end,
             timeout
           ) != :timeout

    :ok
  end

  test "ping, echo and add answer with decoded JSON" do
    assert {:ok, %{"status" => "pong"}} = Snakepit.execute("ping", %{})
    assert {:ok, %{"result" => 5}} = Snakepit.execute("add", %{a: 2, b: 3})
  end

  test "a 20 MB argument and its 20 MB echo cross the HTTP/2 flow-control windows both ways" do
    big = String.duplicate("snakepit", 2_500_000)
    assert {:ok, %{"blob" => echoed}} = Snakepit.execute("echo", %{blob: big}, timeout: 60_000)
    assert byte_size(echoed) == 20_000_000
    assert echoed == big
  end

  test "every JSON type round-trips, integers stay integers" do
    args = %{
      "int" => 9_007_199_254_740_993,
      "neg" => -42,
      "float" => 1.5,
      "str" => "héllo ✓",
      "list" => [1, "two", 3.0, nil, true, false],
      "map" => %{"nested" => %{"deep" => [%{}]}},
      "null" => nil
    }

    assert {:ok, echoed} = Snakepit.execute("echo", args)
    assert echoed == args
    assert is_integer(echoed["int"])
  end

  test "atom keys and values, tuples and charlists are sent as JSON" do
    assert {:ok, %{"k" => "v", "t" => [1, 2], "b" => true}} =
             Snakepit.execute("echo", %{k: :v, t: {1, 2}, b: true})
  end

  test "unencodable arguments are refused before anything is sent" do
    # No slot held by a call an earlier test abandoned, so a leak shows.
    both_workers!()
    before = Snakepit.get_stats().requests

    for {bad, what} <- [
          {self(), "pid"},
          {make_ref(), "reference"},
          {fn -> :ok end, "function"},
          {<<255, 254>>, "UTF-8"},
          {%{1.5 => :x}, "map key"},
          {URI.parse("http://x"), "struct"}
        ] do
      assert {:error, %Error{category: :validation, message: message}} =
               Snakepit.execute("echo", %{v: bad})

      assert message =~ what
      assert message =~ ".v"
    end

    # Each was checked out and returned: no slot leaked, none is busy.
    stats = Snakepit.get_stats()
    assert stats.busy == 0
    # Each was counted as a request: it was checked out before encoding failed.
    assert stats.requests == before + 6
  end

  test "non-map args and a bad command are validation errors" do
    assert {:error, %Error{category: :validation}} = Snakepit.execute("echo", [1, 2])
    assert {:error, %Error{category: :validation}} = Snakepit.execute(:ping, %{})
    assert {:error, %Error{category: :validation}} = Snakepit.execute("ping", %{}, timeout: -1)
  end

  test "an unknown tool is a structured error and the worker stays up" do
    assert {:error, %Error{category: :validation, message: message}} =
             Snakepit.execute("no_such_tool", %{})

    assert message =~ "no_such_tool"
    assert message =~ "ping"
    workers = Snakepit.list_workers()
    assert {:ok, _} = Snakepit.execute("ping", %{})
    assert Snakepit.list_workers() == workers
  end

  test "a Python exception comes back with its type and traceback" do
    assert {:error, %Snakepit.Error.KeyError{} = error} =
             Snakepit.execute("error_demo", %{error_type: "KeyError"})

    assert error.python_type == "KeyError"
    assert error.python_traceback =~ "Traceback"
  end

  test "a call that outlives its timeout returns a timeout error, not an exit" do
    # `sleep` is one C call, which a cooperative stop cannot reach: the
    # error says the tool still runs, and its worker is replaced.
    assert {:error, %Error{category: :timeout, details: %{stop: :running}}} =
             Snakepit.execute("sleep", %{ms: 5_000}, timeout: 200)

    assert {:ok, _} = Snakepit.execute("ping", %{})

    # Back to two free workers once the hard stop replaced the sleeper.
    assert AppPool.wait_until(
             fn -> match?(%{busy: 0, workers: 2, slots_down: 0}, Snakepit.get_stats()) end,
             15_000
           ) != :timeout
  end

  test "stream chunks arrive in order and end with a final chunk" do
    parent = self()
    assert :ok = Snakepit.execute_stream("stream_data", %{count: 5}, &send(parent, {:chunk, &1}))
    chunks = collect_chunks()
    data = Enum.reject(chunks, & &1["is_final"])
    assert Enum.map(data, & &1["index"]) == [0, 1, 2, 3, 4]
    assert List.last(chunks)["is_final"] == true
  end

  test "returning :halt stops the stream" do
    parent = self()

    assert :ok =
             Snakepit.execute_stream("stream_data", %{count: 1_000}, fn chunk ->
               send(parent, {:chunk, chunk})
               if chunk["index"] == 2, do: :halt, else: :ok
             end)

    assert length(collect_chunks()) == 3
    assert {:ok, _} = Snakepit.execute("ping", %{})
  end

  test "a session call sees its session id and sticks to one worker" do
    results =
      for _ <- 1..4 do
        {:ok, %{"pid" => pid}} = Snakepit.execute_in_session("sess-1", "get_pid", %{})
        pid
      end

    assert length(Enum.uniq(results)) == 1
  end

  @tag :tmp_dir
  test "calls run concurrently on both workers", %{tmp_dir: dir} do
    both_workers!()

    # Each call checks in under dir and returns only once both have: two
    # calls that ran one after the other would never get past it.
    results =
      1..2
      |> Task.async_stream(
        fn _ -> Snakepit.execute("rendezvous", %{dir: dir, parties: 2}, timeout: 30_000) end,
        max_concurrency: 2,
        timeout: 60_000
      )
      |> Enum.map(fn {:ok, {:ok, result}} -> result end)

    assert [a, b] = results
    assert a["pid"] != b["pid"]
    # Started and finished on the same (system-wide monotonic) clock: the
    # two calls overlapped.
    assert max(a["started"], b["started"]) < min(a["finished"], b["finished"])
  end

  test "stats and worker list describe the pool" do
    both_workers!()
    assert length(Snakepit.list_workers()) == 2
    stats = Snakepit.get_stats()

    assert %{
             workers: 2,
             available: 2,
             busy: 0,
             queued: 0,
             slots_down: 0,
             down: down,
             requests: requests,
             errors: errors,
             queue_timeouts: 0,
             pool_saturated: 0
           } = stats

    assert down == %{}
    assert is_integer(requests) and is_integer(errors)
  end

  test "a killed Python worker is replaced and the pool serves again" do
    [victim | _] = AppPool.worker_os_pids()
    ref = Process.monitor(worker_pid(victim))
    :ok = Snakepit.Native.signal_process(victim, 9)

    assert_receive {:DOWN, ^ref, :process, _, {:shutdown, {:python_exited, {:signaled, 9}}}},
                   5_000

    assert :ok = Snakepit.Pool.await_ready()
    assert AppPool.await_workers(2, without: [victim]) != :timeout
    refute victim in AppPool.worker_os_pids()
    assert {:ok, _} = Snakepit.execute("ping", %{})
  end

  defp worker_pid(os_pid) do
    [{pid, _}] =
      Registry.select(Snakepit.Pool.Registry, [{{:_, :"$1", :"$2"}, [], [{{:"$1", :"$2"}}]}])
      |> Enum.filter(fn {_, meta} -> meta.os_pid == os_pid end)

    pid
  end

  defp collect_chunks(acc \\ []) do
    receive do
      {:chunk, chunk} -> collect_chunks([chunk | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
