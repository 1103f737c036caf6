defmodule Snakepit.Worker.ExitStatus do
  @moduledoc """
  What a worker's end means, as pure functions shared by the worker, the
  pool and the crash barrier.

  A *status* says how a Python process ended: `{:exited, code}`,
  `{:signaled, signal}`, `:heartbeat_timeout` (it stopped answering and was
  killed), `:hard_stop` (killed because a cancelled call would not stop),
  `:oom_killed` (the kernel's OOM killer), `:stopped` (stopped on purpose:
  its pool or Snakepit shut down) or `:unknown`. A *reason* is the
  exit reason of the `Snakepit.GRPCWorker` that owned it.
  """

  @type t ::
          {:exited, integer()}
          | {:signaled, pos_integer()}
          | :heartbeat_timeout
          | :hard_stop
          | :oom_killed
          | :stopped
          | :unknown

  @signal_names %{
    1 => "SIGHUP",
    2 => "SIGINT",
    3 => "SIGQUIT",
    4 => "SIGILL",
    6 => "SIGABRT",
    7 => "SIGBUS",
    8 => "SIGFPE",
    9 => "SIGKILL",
    11 => "SIGSEGV",
    13 => "SIGPIPE",
    15 => "SIGTERM"
  }

  @table :snakepit_worker_exits
  @kept 1_024

  @doc """
  Records how the Python process `os_pid` ended, for callers that learn of
  the end only after its worker is gone (`last/1`). The last #{@kept}
  are kept.
  """
  @spec record(pos_integer(), t()) :: :ok
  def record(os_pid, status) do
    table = Snakepit.ETSOwner.ensure_table(@table)
    :ets.insert(table, {os_pid, status, System.monotonic_time()})

    if :ets.info(table, :size) > @kept do
      oldest = :ets.foldl(fn {pid, _, t}, acc -> min(acc, {t, pid}) end, {:infinity, nil}, table)
      :ets.delete(table, elem(oldest, 1))
    end

    :ok
  rescue
    _ -> :ok
  end

  @doc "How the Python process `os_pid` ended, when its worker recorded it; else `:unknown`."
  @spec last(pos_integer() | nil) :: t()
  def last(os_pid) do
    case :ets.lookup(@table, os_pid) do
      [{_, status, _}] -> status
      [] -> :unknown
    end
  rescue
    ArgumentError -> :unknown
  end

  @doc """
  Did the worker of the Python process `os_pid` record, at or after `since`
  (`System.monotonic_time/0`), that it was stopped on purpose (`:stopped`)?
  A call whose transport failed learns from this, without waiting, that
  its worker was shut down rather than crashed.
  """
  @spec stopped_since?(pos_integer() | nil, integer()) :: boolean()
  def stopped_since?(os_pid, since) do
    case :ets.lookup(@table, os_pid) do
      [{_, :stopped, at}] -> at >= since
      _ -> false
    end
  rescue
    ArgumentError -> false
  end

  @doc """
  The status behind a worker's exit reason.

      iex> Snakepit.Worker.ExitStatus.of_reason({:shutdown, {:python_exited, {:signaled, 9}}})
      {:signaled, 9}
      iex> Snakepit.Worker.ExitStatus.of_reason({:shutdown, :heartbeat_timeout})
      :heartbeat_timeout
      iex> Snakepit.Worker.ExitStatus.of_reason(:killed)
      :unknown
  """
  @spec of_reason(term()) :: t()
  def of_reason({:shutdown, {:python_exited, status}}), do: status
  def of_reason({:shutdown, {:startup_failed, status}}), do: status
  def of_reason({:shutdown, status}) when status in [:heartbeat_timeout, :hard_stop], do: status
  def of_reason(_other), do: :unknown

  @doc """
  Did the worker end by accident (its process died, hung, or was stopped
  hard), as opposed to a stop that was asked for?

      iex> Snakepit.Worker.ExitStatus.crash?(:shutdown)
      false
      iex> Snakepit.Worker.ExitStatus.crash?({:shutdown, {:python_exited, {:exited, 1}}})
      true
  """
  @spec crash?(term()) :: boolean()
  def crash?(:normal), do: false
  def crash?(:shutdown), do: false
  def crash?({:shutdown, {:python_exited, _}}), do: true
  def crash?({:shutdown, status}) when status in [:heartbeat_timeout, :hard_stop], do: true
  def crash?({:shutdown, _}), do: false
  def crash?(_), do: true

  @doc """
  The status in words, after the worker's name.

      iex> Snakepit.Worker.ExitStatus.describe({:signaled, 9})
      "was killed by signal 9 (SIGKILL)"
      iex> Snakepit.Worker.ExitStatus.describe({:exited, 3})
      "exited with status 3"
  """
  @spec describe(t() | term()) :: String.t()
  def describe({:signaled, sig}) do
    case @signal_names do
      %{^sig => name} -> "was killed by signal #{sig} (#{name})"
      _ -> "was killed by signal #{sig}"
    end
  end

  def describe({:exited, code}), do: "exited with status #{code}"
  def describe(:heartbeat_timeout), do: "stopped answering heartbeats and was killed"
  def describe(:hard_stop), do: "was killed because a cancelled call did not stop"
  def describe(:oom_killed), do: "was killed by the kernel's OOM killer"
  def describe(:stopped), do: "was stopped (its pool or Snakepit shut down)"
  def describe(_), do: "exited (status unknown)"

  @doc """
  What a crash status says about its cause.

      iex> Snakepit.Worker.ExitStatus.classify({:signaled, 11})
      :segfault
      iex> Snakepit.Worker.ExitStatus.classify({:exited, 137})
      :killed
  """
  @spec classify(t() | term()) :: atom()
  def classify({:signaled, 9}), do: :killed
  def classify({:signaled, 11}), do: :segfault
  def classify({:signaled, 6}), do: :abort
  def classify({:signaled, 7}), do: :bus_error
  def classify({:signaled, _}), do: :signaled
  def classify({:exited, 137}), do: :killed
  def classify({:exited, _}), do: :exit
  def classify(:heartbeat_timeout), do: :unresponsive
  def classify(:hard_stop), do: :hard_stop
  def classify(:oom_killed), do: :oom_killed
  def classify(_), do: :unknown

  @doc """
  Was a process that ended with `status` killed from outside (SIGKILL or
  SIGTERM from someone else, or taken down with a fork server that died:
  status `:unknown`), so that it is expected to start fine next time,
  rather than failing on its own? An OOM kill is the process's own doing.

      iex> Snakepit.Worker.ExitStatus.killed_from_outside?({:signaled, 9})
      true
      iex> Snakepit.Worker.ExitStatus.killed_from_outside?({:exited, 2})
      false
      iex> Snakepit.Worker.ExitStatus.killed_from_outside?(:oom_killed)
      false
  """
  @spec killed_from_outside?(t() | term()) :: boolean()
  def killed_from_outside?({:signaled, sig}) when sig in [9, 15], do: true
  def killed_from_outside?(:unknown), do: true
  def killed_from_outside?(_status), do: false
end
