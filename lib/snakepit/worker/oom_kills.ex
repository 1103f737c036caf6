defmodule Snakepit.Worker.OOMKills do
  @moduledoc """
  Tells whether a worker that died of SIGKILL was killed by the kernel's
  OOM killer.

  The kernel counts every OOM kill, global or inside a memory cgroup, in
  `/proc/vmstat` (`oom_kill`). A worker reads the count when it becomes
  ready; when its Python process later dies of a SIGKILL that Snakepit did
  not send and the count has grown, the death is reported as
  `:oom_killed`. (Another process OOM-killed while the worker was killed by
  someone else would be mistaken for it; the kernel offers no per-process
  record.)
  """

  @vmstat "/proc/vmstat"

  @doc "The kernel's count of OOM kills so far, or nil where it cannot be read."
  @spec count(Path.t()) :: non_neg_integer() | nil
  def count(vmstat \\ @vmstat) do
    with {:ok, text} <- File.read(vmstat),
         [_, n] <- Regex.run(~r/^oom_kill (\d+)$/m, text) do
      String.to_integer(n)
    else
      _ -> nil
    end
  end

  @doc """
  The status to report for a worker that ended with `status`, given the
  count when it started (`since`) and now (`now`).

      iex> Snakepit.Worker.OOMKills.classify({:signaled, 9}, 3, 4)
      :oom_killed
      iex> Snakepit.Worker.OOMKills.classify({:signaled, 9}, 3, 3)
      {:signaled, 9}
      iex> Snakepit.Worker.OOMKills.classify({:exited, 1}, 3, 4)
      {:exited, 1}
  """
  @spec classify(term(), non_neg_integer() | nil, non_neg_integer() | nil) :: term()
  def classify({:signaled, 9}, since, now)
      when is_integer(since) and is_integer(now) and now > since,
      do: :oom_killed

  def classify(status, _since, _now), do: status
end
