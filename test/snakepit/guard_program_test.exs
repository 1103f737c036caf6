defmodule Snakepit.GuardProgramTest do
  # Each worker's group guard execs the small snakepit_guard program instead
  # of staying a forked copy of the VM (which would pin a copy-on-write
  # image of the VM's memory for the worker's whole life).
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.AppPool

  defp children_of_the_vm do
    vm = System.pid()

    for dir <- File.ls!("/proc"),
        String.match?(dir, ~r/^\d+$/),
        {:ok, stat} <- [File.read("/proc/#{dir}/stat")],
        [_, rest] = String.split(stat, ") ", parts: 2),
        Enum.at(String.split(rest), 1) == vm,
        do: String.to_integer(dir)
  end

  # The file a process runs, as {device, inode}: priv/ may be reached
  # through a link, which /proc's paths resolve and priv_dir does not.
  defp exe(pid), do: file_id("/proc/#{pid}/exe")

  defp file_id(path) do
    case File.stat(path) do
      {:ok, stat} -> {stat.major_device, stat.minor_device, stat.inode}
      _ -> nil
    end
  end

  defp rss_kb(pid) do
    [_, kb] = Regex.run(~r/^VmRSS:\s+(\d+)/m, File.read!("/proc/#{pid}/status"))
    String.to_integer(kb)
  end

  test "every guard runs snakepit_guard and stays small" do
    :ok = AppPool.start!(pool_size: 3)
    guard = Path.join(:code.priv_dir(:snakepit), "native/snakepit_guard")
    assert File.exists?(guard)

    guards = fn -> Enum.filter(children_of_the_vm(), &(exe(&1) == file_id(guard))) end
    # Three workers and their fork server, each with its guard. A guard
    # execs snakepit_guard on its own schedule, after its worker may have
    # reported ready: wait for the fourth rather than race it.
    assert AppPool.wait_until(fn -> length(guards.()) == 4 end, 5_000) != :timeout
    guards = guards.()
    assert length(guards) == 4
    for pid <- guards, do: assert(rss_kb(pid) < 8 * 1024)

    # No child of the VM is a forked copy of the VM itself.
    beam = exe(String.to_integer(System.pid()))
    assert Enum.filter(children_of_the_vm(), &(exe(&1) == beam)) == []
  end
end
