defmodule Snakepit.Worker.ExitReport do
  @moduledoc """
  What a `Snakepit.GRPCWorker` tells others when it ends badly: a failed
  start (an error for its pool, or for the caller of a standalone start,
  with the last lines of its output), a lost connection, and its Python
  process's exit (telemetry, one log line and the exit status recorded for
  calls that fail meanwhile). The worker stops itself; these only report.

  `worker` is the `Snakepit.GRPCWorker`'s state.
  """

  alias Snakepit.{Error, Telemetry}
  alias Snakepit.Worker.{ExitStatus, OOMKills}

  @doc """
  Reports that the worker failed to start because of `cause`; `status`, the
  Python process's exit status when it exited, tells whether it was killed
  from outside (then the next start is expected to succeed).
  """
  @spec startup_failed(map(), String.t(), ExitStatus.t() | nil) :: :ok
  def startup_failed(worker, cause, status) do
    output = :queue.to_list(worker.output)

    last =
      if output == [],
        do: "",
        else: "\nLast output of the worker:\n  " <> Enum.join(output, "\n  ")

    error =
      Error.worker_error("worker #{worker.id} failed to start: #{cause}#{last}", %{
        worker_id: worker.id,
        pool: worker.pool_name,
        cause: cause,
        output: output,
        transient: ExitStatus.killed_from_outside?(status)
      })

    Telemetry.emit([:snakepit, :pool, :worker, :startup_failed], %{}, %{
      worker_id: worker.id,
      pool_name: worker.pool_name,
      cause: cause
    })

    cond do
      worker.pool_pid ->
        send(worker.pool_pid, {:worker_failed, worker.pool_name, worker.id, error})

      # A standalone worker's caller waits in GRPCWorker.start_link/1.
      worker.starter ->
        send(worker.starter, {:snakepit_worker_failed, self(), error})

      true ->
        :ok
    end

    :ok
  end

  @doc """
  Reports that the ready worker's Python process exited with `status`, and
  returns the status, told apart as an OOM kill when the kernel's count of
  them rose since the worker became ready.
  """
  @spec python_exited(map(), ExitStatus.t()) :: ExitStatus.t()
  def python_exited(worker, status) do
    status = OOMKills.classify(status, worker.oom_kills, OOMKills.count())

    ExitStatus.record(worker.os_pid, status)
    connection_lost(worker, {:python_exited, status})

    Telemetry.emit([:snakepit, :pool, :worker, :terminated], %{}, %{
      worker_id: worker.id,
      pool_name: worker.pool_name,
      reason: ExitStatus.describe(status)
    })

    # One line, not a crash report: the starter replaces this worker.
    Snakepit.Logger.error(
      :worker,
      "worker #{worker.id} (OS pid #{worker.os_pid}) #{ExitStatus.describe(status)}; restarting it"
    )

    status
  end

  @doc """
  A ready worker's channel goes away with its Python process: the older
  guide's connection event. (A worker is replaced, never reconnected.)
  """
  @spec connection_lost(map(), term()) :: :ok
  def connection_lost(%{status: :ready} = worker, reason) do
    Telemetry.emit(
      [:snakepit, :grpc, :connection, :lost],
      %{system_time: System.system_time()},
      %{node: node(), worker_id: worker.id, pool_name: worker.pool_name, reason: reason}
    )

    :ok
  end

  def connection_lost(_worker, _reason), do: :ok
end
