# Upstream Snakepit style: configure, then run_as_script; the pool is picked
# with pool_name:, arguments carry DateTimes and big integers.
Application.put_env(:snakepit, :pooling_enabled, true)

Application.put_env(:snakepit, :pools, [
  %{name: :default, pool_size: 1},
  %{name: :analytics, pool_size: 1}
])

Snakepit.run_as_script(
  fn ->
    {:ok, %{"status" => "pong"}} = Snakepit.execute("ping", %{})

    {:ok, %{"timestamp" => stamp, "note" => "hi"}} =
      Snakepit.execute("echo", %{timestamp: DateTime.utc_now(), note: "hi"})

    {:ok, _} = DateTime.from_iso8601(stamp) |> then(fn {:ok, dt, _} -> {:ok, dt} end)

    {:ok, %{"pid" => default_pid}} = Snakepit.execute("get_pid", %{})
    {:ok, %{"pid" => analytics_pid}} = Snakepit.execute("get_pid", %{}, pool_name: :analytics)
    true = default_pid != analytics_pid

    {:ok, %{"result" => sum}} = Snakepit.execute("add", %{a: 2 ** 100, b: 1})
    true = sum == 2 ** 100 + 1

    {:ok, %{"task_number" => 3}} =
      Snakepit.execute("sleep_task", %{duration_ms: 10, task_number: 3})

    {:error, %Snakepit.Error.PythonException{}} = Snakepit.execute("error_demo", %{})
    IO.puts("COMPAT OK")
  end,
  exit_mode: :halt
)
