defmodule Snakepit.OS.CommandTest do
  use ExUnit.Case, async: true

  alias Snakepit.OS.Command

  test "collects output and reports the exit status" do
    assert {:ok, "hello\n"} = Command.run("echo", ["hello"])

    # stdout and stderr are separate pipes: their relative order is not kept.
    assert {:error, {:exit_status, 3, output}} =
             Command.run("sh", ["-c", "echo out; echo err >&2; exit 3"])

    assert output |> String.split("\n", trim: true) |> Enum.sort() == ["err", "out"]
  end

  test "a missing program is :not_found" do
    assert {:error, :not_found} = Command.run("no-such-program-here", [])
    assert {:error, :not_found} = Command.run("/nonexistent/bin/x", [])
  end

  @tag :tmp_dir
  test "an overrunning command is killed, group and all, and reported as a timeout", %{
    tmp_dir: dir
  } do
    pidfile = Path.join(dir, "sleep.pid")
    script = "sleep 30 & echo $! > #{pidfile}; wait"
    # The shell writes the pid at once and then waits for its child; the
    # timeout only has to outlast that first step.
    assert {:error, :timeout} = Command.run("sh", ["-c", script], timeout_ms: 1_000)
    sleeper = pidfile |> File.read!() |> String.trim() |> String.to_integer()

    # Gone with its group (a generous limit: it would live 30 s otherwise
    # and the test would fail).
    assert Snakepit.Test.AppPool.wait_until(
             fn -> not Snakepit.Native.process_alive(sleeper) end,
             20_000
           ) !=
             :timeout
  end
end
