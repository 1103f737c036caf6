# Upstream's affinity demo: a long call holds a session's worker, then a
# second call in the same session on a strict_fail_fast pool fails fast
# instead of waiting or going elsewhere; once the worker is free it works.
Application.put_env(:snakepit, :pooling_enabled, true)

Application.put_env(:snakepit, :pools, [
  %{name: :default, pool_size: 1},
  %{name: :strict_fail_fast_pool, pool_size: 2, affinity: :strict_fail_fast}
])

Snakepit.run_as_script(
  fn ->
    session = "affinity-demo"
    opts = [pool_name: :strict_fail_fast_pool]
    {:ok, %{"pid" => pinned}} = Snakepit.execute_in_session(session, "get_pid", %{}, opts)

    long =
      Task.async(fn ->
        Snakepit.execute_in_session(
          session,
          "sleep_task",
          %{duration_ms: 1500, task_number: 1},
          opts
        )
      end)

    # Wait (without touching the worker) until the long call holds it.
    held = fn held ->
      if Snakepit.get_stats(:strict_fail_fast_pool).busy == 1,
        do: :ok,
        else: receive(after: (10 -> held.(held)))
    end

    :ok = held.(held)

    {:error, %Snakepit.Error{category: :pool, details: %{reason: :worker_busy}}} =
      Snakepit.execute_in_session(session, "get_pid", %{}, opts)

    {:ok, %{"task_number" => 1}} = Task.await(long, 10_000)
    {:ok, %{"pid" => ^pinned}} = Snakepit.execute_in_session(session, "get_pid", %{}, opts)
    IO.puts("COMPAT OK")
  end,
  exit_mode: :halt
)
