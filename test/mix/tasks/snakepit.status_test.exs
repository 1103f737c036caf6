defmodule Mix.Tasks.Snakepit.StatusTest do
  # Real workers: the status of a running pool, here and over distribution.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Mix.Tasks.Snakepit.Status, as: Task
  alias Snakepit.Test.{AppPool, ExternalBeam}

  setup do
    shell = Mix.shell()
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(shell) end)
  end

  defp output do
    receive do
      {:mix_shell, :info, [text]} -> text
    after
      0 -> flunk("the task printed nothing")
    end
  end

  test "a healthy pool: every pool and worker is shown and the task returns" do
    AppPool.start!(pools: [%{name: :default, pool_size: 2}])
    for _ <- 1..3, do: {:ok, _} = Snakepit.execute("ping", %{})

    snapshot = Snakepit.Status.snapshot()
    assert snapshot.healthy and snapshot.reason == nil
    assert [%{name: :default, pool_size: 2, profile: :process, workers: workers}] = snapshot.pools
    assert length(workers) == 2
    assert Enum.sum(Enum.map(workers, & &1.requests)) >= 3

    for w <- workers do
      assert is_integer(w.os_pid) and w.rss_mb > 0 and w.state == :ready and w.uptime_ms >= 0
    end

    Task.run([])
    text = output()
    assert text =~ "healthy"
    assert text =~ "pool :default  profile=:process  size=2  ready=2 busy=0 down=0"
    for w <- workers, do: assert(text =~ "os_pid=#{w.os_pid}")
  end

  test "no running pool is unhealthy: a one-line reason and exit status 1" do
    AppPool.restart(pooling_enabled: false)
    assert catch_exit(Task.run([])) == {:shutdown, 1}
    assert output() =~ "UNHEALTHY: no pool is running"
    assert_received {:mix_shell, :error, [reason]}
    refute reason =~ "\n"
  end

  test "--node asks a running node of the app over distribution" do
    {_, 0} = System.cmd("epmd", ["-daemon"])
    name = "status_target_#{System.unique_integer([:positive])}"

    vm =
      ExternalBeam.start!(
        [pool_size: 1],
        """
        {:ok, _} = Node.start(:#{name}, :shortnames)
        Node.set_cookie(:snakepit_status_test)
        IO.puts("EXTRA " <> Atom.to_string(node()))
        """
      )

    on_exit(fn -> Snakepit.ProcessKiller.kill_process(vm.os_pid, :sigkill) end)
    [target] = vm.extra

    script = fn node ->
      """
      Application.ensure_all_started(:mix)
      Mix.Tasks.Snakepit.Status.run(["--node", "#{node}", "--cookie", "snakepit_status_test"])
      """
    end

    {out, status} = ExternalBeam.run(script.(target))
    assert status == 0, out
    assert out =~ "Snakepit on #{target}: healthy"
    assert out =~ "pool :default"
    assert Enum.all?(vm.workers, &(out =~ "os_pid=#{&1}"))

    [_, host] = String.split(target, "@")
    {out, status} = ExternalBeam.run(script.("nobody_here@#{host}"))
    assert status == 2, out
    assert out =~ "cannot reach nobody_here@#{host}"
  end
end
