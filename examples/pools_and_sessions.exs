# Named pools, session affinity modes, queueing limits and recycling, with
# real Python workers (the bundled ShowcaseAdapter: `sleep` and `get_pid`
# make scheduling visible).
#
#     mix run examples/pools_and_sessions.exs

defmodule PoolsAndSessions do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 38) <> inspect(value, pretty: true, width: 90))

  def run do
    Application.stop(:snakepit)

    Application.put_env(:snakepit, :pools, [
      %{name: :default, pool_size: 2, max_queue_size: 1, queue_timeout: 2_000},
      %{name: :strict, pool_size: 2, affinity: :strict_queue, worker_max_requests: 5}
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete()

    show("workers per pool", %{
      default: Snakepit.list_workers(:default),
      strict: Snakepit.list_workers(:strict)
    })

    # :hint (the default): a session prefers its worker, but moves when it is busy.
    pid = pid_in("user-1", :default)
    busy = Task.async(fn -> Snakepit.execute_in_session("user-1", "sleep", %{ms: 300}) end)
    wait_busy(:default)
    show(":hint while its worker is busy", {pid, "->", pid_in("user-1", :default)})
    Task.await(busy)

    # :strict_queue: the session waits for its own worker.
    pid = pid_in("user-2", :strict)

    busy =
      Task.async(fn ->
        Snakepit.execute_in_session("user-2", "sleep", %{ms: 300}, pool: :strict)
      end)

    wait_busy(:strict)
    show(":strict_queue waits for its worker", {pid, "->", pid_in("user-2", :strict)})
    Task.await(busy)

    # :strict_fail_fast per call: an error instead of waiting.
    busy =
      Task.async(fn ->
        Snakepit.execute_in_session("user-2", "sleep", %{ms: 300}, pool: :strict)
      end)

    wait_busy(:strict)

    show(
      ":strict_fail_fast while busy",
      Snakepit.execute_in_session("user-2", "get_pid", %{},
        pool: :strict,
        affinity: :strict_fail_fast
      )
      |> reason()
    )

    Task.await(busy)

    # A bounded queue: two busy workers, one queued call, the next is refused.
    tasks = for _ <- 1..3, do: Task.async(fn -> Snakepit.execute("sleep", %{ms: 400}) end)
    wait_until(fn -> Snakepit.get_stats(:default).queued == 1 end)
    show("queue full", Snakepit.execute("get_pid", %{}) |> reason())
    Enum.each(tasks, &Task.await/1)

    # A deadline shorter than the wait: a timeout, and the call never runs.
    busy = for _ <- 1..2, do: Task.async(fn -> Snakepit.execute("sleep", %{ms: 400}) end)
    wait_busy(:default, 2)
    show("deadline while queued", Snakepit.execute("get_pid", %{}, timeout: 100) |> reason())
    Enum.each(busy, &Task.await/1)

    # worker_max_requests: 5 on :strict recycles its workers as they serve.
    for _ <- 1..12, do: {:ok, _} = Snakepit.execute("get_pid", %{}, pool: :strict)

    wait_until(fn ->
      Enum.any?(
        Snakepit.list_workers(:strict),
        &(&1 not in ["strict_worker_1", "strict_worker_2"])
      )
    end)

    show("strict workers after recycling", Snakepit.list_workers(:strict))

    show("stats :default", Snakepit.get_stats(:default))
  end

  defp pid_in(session, pool) do
    {:ok, %{"pid" => pid}} = Snakepit.execute_in_session(session, "get_pid", %{}, pool: pool)
    pid
  end

  defp reason({:error, %Snakepit.Error{category: c, details: d}}), do: {:error, c, d[:reason]}
  defp reason(other), do: other

  defp wait_busy(pool, n \\ 1), do: wait_until(fn -> Snakepit.get_stats(pool).busy >= n end)

  defp wait_until(fun) do
    unless fun.() do
      receive after: (5 -> nil)
      wait_until(fun)
    end
  end
end

PoolsAndSessions.run()
