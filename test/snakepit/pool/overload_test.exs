defmodule Snakepit.Pool.OverloadTest do
  # A traffic spike on real workers: 2 workers, a 50 ms tool, callers with
  # a 300 ms budget. The default :deadline discipline refuses what cannot
  # finish in time, fast and without running it; FIFO stays available.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.{Error, Telemetry}
  alias Snakepit.Telemetry.GrpcStream
  alias Snakepit.Test.AppPool

  @tool_ms 50
  @budget 300

  defp start!(discipline) do
    AppPool.start!(
      pool_size: 2,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
      pools: [%{name: :default, pool_size: 2, queue: [discipline: discipline]}]
    )

    assert AppPool.await_workers(2) != :timeout
    # The pool learns the tool's run time from calls that finish.
    for _ <- 1..4, do: {:ok, _} = Snakepit.execute("sleep", %{"ms" => @tool_ms})
  end

  defp call(id) do
    started = System.monotonic_time(:millisecond)

    result =
      Snakepit.execute("sleep", %{"ms" => @tool_ms}, timeout: @budget, correlation_id: id)

    {id, result, System.monotonic_time(:millisecond) - started}
  end

  # `n` callers calling again as soon as they are answered, for `ms`.
  defp spike(n, ms) do
    stop_at = System.monotonic_time(:millisecond) + ms

    1..n
    |> Task.async_stream(
      fn caller -> loop(caller, stop_at, 0, []) end,
      max_concurrency: n,
      timeout: ms + 5_000
    )
    |> Enum.flat_map(fn {:ok, outcomes} -> outcomes end)
  end

  defp loop(caller, stop_at, i, acc) do
    if System.monotonic_time(:millisecond) >= stop_at,
      do: acc,
      else: loop(caller, stop_at, i + 1, [call("spike-#{caller}-#{i}") | acc])
  end

  test "under 32 callers: refused calls get :overloaded fast and never reach a worker" do
    start!(:deadline)
    parent = self()

    :ok =
      Telemetry.attach(
        "overload-python-starts",
        [:snakepit, :python, :call, :start],
        fn _event, _m, meta, _ -> send(parent, {:ran, meta[:correlation_id]}) end,
        nil
      )

    on_exit(fn -> Telemetry.detach("overload-python-starts") end)

    outcomes = spike(32, 2_000)
    ok = for {id, {:ok, _}, ms} <- outcomes, do: {id, ms}

    shed =
      for {id, {:error, %Error{details: %{reason: :overloaded}} = e}, ms} <- outcomes,
          do: {id, e, ms}

    other = for {_, {:error, e}, _} <- outcomes, e.details[:reason] != :overloaded, do: e

    assert length(ok) > 0 and length(shed) > 0

    # Successes finished within their budget (plus the answer's way back).
    for {_id, ms} <- ok, do: assert(ms <= @budget + 50)

    # Refusals are answered well before the deadline, with a retry hint.
    for {_id, e, ms} <- shed do
      assert e.category == :pool and is_integer(e.details.retry_after_ms)
      assert ms < @budget
    end

    # Almost nothing else failed (a call admitted at the edge may still
    # time out mid-run): far from the collapse FIFO shows.
    assert length(other) <= length(ok) / 10

    # What reached Python: never a refused call.
    :ok = GrpcStream.toggle(:all, true)
    ran = collect_ran(MapSet.new())
    shed_ids = MapSet.new(shed, &elem(&1, 0))
    assert MapSet.disjoint?(ran, shed_ids)
    assert Enum.all?(ok, fn {id, _} -> id in ran end)

    # Nothing stays leased or queued; the refusals are counted.
    stats = Snakepit.get_stats()
    assert stats.busy == 0 and stats.queued == 0
    assert stats.shed >= length(shed)
    assert {:ok, _} = Snakepit.execute("sleep", %{"ms" => 1}, timeout: @budget)
  end

  defp collect_ran(acc) do
    receive do
      {:ran, id} -> collect_ran(MapSet.put(acc, id))
    after
      200 -> acc
    end
  end

  test "streams and strict sessions follow the same rules under load" do
    start!(:deadline)
    # A command is refused by prediction once the pool has seen it run.
    :ok = Snakepit.execute_stream("stream_data", %{"count" => 2}, fn _ -> :ok end)
    stop_at = System.monotonic_time(:millisecond) + 1_500

    load =
      Task.async(fn ->
        Task.async_stream(1..16, fn c -> loop(c, stop_at, 0, []) end, max_concurrency: 16)
        |> Stream.run()
      end)

    # Both workers are busy and calls are queued: wait for the pool to say so.
    assert AppPool.wait_until(fn -> Snakepit.get_stats().shed > 0 end, 5_000) != :timeout

    assert {:error, %Error{details: %{reason: :overloaded}}} =
             Snakepit.execute_stream("stream_data", %{"count" => 2}, fn _ -> :ok end, timeout: 60)

    sid = "overload-#{System.unique_integer([:positive])}"

    results =
      for _ <- 1..20 do
        Snakepit.execute_in_session(sid, "sleep", %{"ms" => @tool_ms},
          timeout: 120,
          affinity: :strict_queue
        )
      end

    assert Enum.any?(results, &match?({:error, %Error{details: %{reason: :overloaded}}}, &1))

    assert Enum.all?(results, fn
             {:ok, _} ->
               true

             {:error, %Error{details: %{reason: reason}}} ->
               reason in [:overloaded, :queue_timeout]

             {:error, %Error{category: :timeout}} ->
               true
           end)

    Task.await(load, 10_000)
  end

  test "queue: [discipline: :fifo] keeps the older behaviour: no refusal, calls wait" do
    start!(:fifo)
    outcomes = spike(16, 1_000)

    refute Enum.any?(
             outcomes,
             &match?({_, {:error, %Error{details: %{reason: :overloaded}}}, _}, &1)
           )

    assert Snakepit.get_stats().shed == 0
    assert Enum.any?(outcomes, &match?({_, {:error, %Error{category: :timeout}}, _}, &1))
  end

  test "a bad queue setting names the key" do
    assert {:error, message} =
             Snakepit.Config.Schema.check(%{queue: [discipline: :lifo]})

    assert message =~ "queue must be" and message =~ ":deadline"
  end
end
