defmodule Snakepit.RuntimeCleanup do
  @moduledoc """
  One bounded cleanup pass over worker processes: SIGTERM every process
  group, wait until all are gone or `timeout_ms` passes, SIGKILL the
  survivors. It never waits longer than `timeout_ms` + 1 s.
  """

  alias Snakepit.{Config, ProcessKiller, RunID}

  @type entry :: %{
          required(:process_pid) => integer(),
          optional(:pgid) => integer(),
          optional(atom()) => term()
        }

  @doc """
  Cleans up `entries` (maps with `:process_pid` and optionally `:pgid`).
  Returns `:ok` when all are gone, `{:timeout, pids}` with the survivors.
  """
  @spec run([entry()], keyword()) :: :ok | {:timeout, [integer()]}
  def run(entries, opts \\ []) do
    timeout = Keyword.get(opts, :timeout_ms, 2_000)
    pids = entries |> Enum.map(& &1.process_pid) |> Enum.filter(&ProcessKiller.process_alive?/1)

    groups =
      entries
      |> Enum.filter(&(&1.process_pid in pids))
      |> Enum.map(&Map.get(&1, :pgid, &1.process_pid))
      |> Enum.uniq()

    signal(groups, pids, :sigterm)
    alive? = fn -> Enum.any?(pids, &ProcessKiller.process_alive?/1) end

    unless ProcessKiller.wait_until_gone(alive?, timeout) do
      signal(groups, Enum.filter(pids, &ProcessKiller.process_alive?/1), :sigkill)
      ProcessKiller.wait_until_gone(alive?, 1_000)
    end

    case Enum.filter(pids, &ProcessKiller.process_alive?/1) do
      [] -> :ok
      survivors -> {:timeout, survivors}
    end
  end

  # The group takes grandchildren along; the pid alone covers a process
  # that left its group.
  defp signal(groups, pids, sig) do
    Enum.each(groups, &ProcessKiller.kill_process_group(&1, sig))
    Enum.each(pids, &ProcessKiller.kill_process(&1, sig))
  end

  @doc """
  Cleans up every process this VM's run started, found in the process
  table by run id and instance (so also those the registry never heard of).
  """
  @spec cleanup_current_run(keyword()) :: :ok | {:timeout, [integer()]}
  def cleanup_current_run(opts \\ []) do
    RunID.current()
    |> ProcessKiller.find_by_run_id(Config.instance_filters())
    |> Enum.map(&%{process_pid: &1, pgid: &1})
    |> run(opts)
  end
end
