defmodule Snakepit.Hardware.ProbeTest do
  use ExUnit.Case, async: true

  alias Snakepit.Hardware.Probe

  test "default runner: output, exit status, missing executable" do
    sh = Probe.runner([], :none, "sh")
    assert {:ok, "hi\n"} = Probe.run(sh, ["-c", "echo hi"], 2_000)

    assert {:error, {:exit_status, 3, "err\n"}} =
             Probe.run(sh, ["-c", "echo err >&2; exit 3"], 2_000)

    missing = Probe.runner([], :none, "snakepit-no-such-tool")
    assert {:error, :not_found} = Probe.run(missing, [], 2_000)
  end

  test "default runner: a hanging command is abandoned at the timeout" do
    sh = Probe.runner([probe_timeout_ms: 100], :none, "sh")
    {micros, result} = :timer.tc(fn -> Probe.run(sh, ["-c", "sleep 30"], 100) end)
    assert result == {:error, :timeout}
    assert micros < 1_000_000
  end

  test "injected runners are bounded and their mistakes contained" do
    assert {:error, :timeout} = Probe.run(fn _ -> Process.sleep(:infinity) end, [], 20)

    assert {:error, {:probe_crashed, :error, %RuntimeError{}}} =
             Probe.run(fn _ -> raise "x" end, [], 1_000)

    assert {:error, {:probe_crashed, :exit, :bye}} = Probe.run(fn _ -> exit(:bye) end, [], 1_000)
    assert {:error, {:bad_probe_result, 42}} = Probe.run(fn _ -> 42 end, [], 1_000)

    assert {:error, {:bad_probe_result, {:ok, :not_binary}}} =
             Probe.run(fn _ -> {:ok, :not_binary} end, [], 1_000)
  end

  test "read" do
    assert {:error, :enoent} = Probe.read("/nonexistent/file")
    assert {:error, :enoent} = Probe.read(nil)
  end
end
