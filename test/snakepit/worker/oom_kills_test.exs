defmodule Snakepit.Worker.OOMKillsTest do
  # The OOM-kill test itself needs a writable memory cgroup; the parsing
  # and the decision it rests on are tested here, everywhere, from fixtures.
  use ExUnit.Case, async: true

  alias Snakepit.Worker.OOMKills

  doctest Snakepit.Worker.OOMKills

  @fixtures Path.expand("../../fixtures/vmstat", __DIR__)

  test "count/1 reads oom_kill from a whole /proc/vmstat" do
    # A real Linux 6.18 /proc/vmstat (192 counters) with oom_kill set to 42.
    assert OOMKills.count(Path.join(@fixtures, "linux_6.18.txt")) == 42
  end

  test "count/1 is nil where the kernel does not count OOM kills or the file is unreadable" do
    # Kernels before 4.13 have no oom_kill line.
    assert OOMKills.count(Path.join(@fixtures, "no_oom_kill_line.txt")) == nil
    assert OOMKills.count(Path.join(@fixtures, "no_such_file")) == nil
  end

  @tag :tmp_dir
  test "count/1 takes only a whole oom_kill line with a number", %{tmp_dir: dir} do
    for {text, expected} <- [
          {"oom_kill 0\n", 0},
          {"pgfault 3\noom_kill 17\npgmajfault 5\n", 17},
          # The last line of the file, without a newline.
          {"pgfault 3\noom_kill 9", 9},
          {"", nil},
          {"oom_kill_total 5\n", nil},
          {"xoom_kill 5\n", nil},
          {"oom_kill -1\n", nil},
          {"oom_kill five\n", nil}
        ] do
      path = Path.join(dir, "vmstat")
      File.write!(path, text)
      assert OOMKills.count(path) == expected, "#{inspect(text)}"
    end
  end

  test "count/0 reads this machine's /proc/vmstat" do
    case File.read("/proc/vmstat") do
      {:ok, text} ->
        if text =~ ~r/^oom_kill \d+$/m,
          do: assert(is_integer(OOMKills.count())),
          else: assert(OOMKills.count() == nil)

      {:error, _} ->
        assert OOMKills.count() == nil
    end
  end

  test "classify/3: only a SIGKILL while the count grew is an OOM kill" do
    assert OOMKills.classify({:signaled, 9}, 42, 43) == :oom_killed
    assert OOMKills.classify({:signaled, 9}, 0, 5) == :oom_killed
    # The count did not grow: someone else's SIGKILL.
    assert OOMKills.classify({:signaled, 9}, 42, 42) == {:signaled, 9}
    # Other deaths keep their status, whatever the count did.
    assert OOMKills.classify({:signaled, 11}, 42, 43) == {:signaled, 11}
    assert OOMKills.classify({:signaled, 15}, 42, 43) == {:signaled, 15}
    assert OOMKills.classify({:exited, 137}, 42, 43) == {:exited, 137}
    # No count at start or now (no /proc/vmstat, an old kernel): not known.
    assert OOMKills.classify({:signaled, 9}, nil, 43) == {:signaled, 9}
    assert OOMKills.classify({:signaled, 9}, 42, nil) == {:signaled, 9}
    assert OOMKills.classify({:signaled, 9}, nil, nil) == {:signaled, 9}
  end

  test "fixture counts through classify, as the worker uses them" do
    since = OOMKills.count(Path.join(@fixtures, "linux_6.18.txt"))
    assert OOMKills.classify({:signaled, 9}, since - 1, since) == :oom_killed
    assert OOMKills.classify({:signaled, 9}, since, since) == {:signaled, 9}
    old = OOMKills.count(Path.join(@fixtures, "no_oom_kill_line.txt"))
    assert OOMKills.classify({:signaled, 9}, old, old) == {:signaled, 9}
  end
end
