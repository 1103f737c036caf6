defmodule Snakepit.QuietLogsTest do
  # Real workers: deaths are one line each, reports never carry secrets,
  # and a normal stop says nothing at :warning or :error.
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureLog

  alias Snakepit.Test.AppPool

  @secret "sk-live-6f1d2c9a-never-log-me"

  defp start do
    AppPool.start!(pool_size: 2, adapter_env: [{"MY_API_KEY", @secret}])
  end

  defp with_debug_logs(fun) do
    Snakepit.Logger.with_level(:debug, fn -> capture_log([level: :debug], fun) end)
  end

  test "killed and crashing workers never put adapter_env into the logs" do
    start()

    log =
      with_debug_logs(fn ->
        old = AppPool.worker_os_pids()
        for os_pid <- old, do: Snakepit.ProcessKiller.kill_process(os_pid, :sigkill)
        assert AppPool.await_workers(2, without: old, timeout: 20_000) != :timeout

        # A worker whose Elixir side crashes prints its state in an OTP
        # report: redacted.
        [id | _] = Snakepit.list_workers()

        worker =
          Snakepit.Pool.Worker.Starter.whereis(id) |> Snakepit.Pool.Worker.Starter.worker_pid()

        ref = Process.monitor(worker)
        :sys.terminate(worker, :simulated_crash)
        assert_receive {:DOWN, ^ref, :process, ^worker, :simulated_crash}
        assert AppPool.await_workers(2, timeout: 20_000) != :timeout
      end)

    assert log =~ "was killed by signal 9 (SIGKILL)"
    assert log =~ "[redacted]"
    refute log =~ @secret
    refute log =~ "GenServer #PID" and log =~ ":python_exited"
  end

  test "a normal application stop logs nothing at :warning or :error" do
    start()
    {:ok, _} = Snakepit.execute("ping", %{})
    log = capture_log([level: :warning], fn -> :ok = Application.stop(:snakepit) end)
    assert log == ""
  end
end
