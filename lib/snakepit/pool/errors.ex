defmodule Snakepit.Pool.Errors do
  @moduledoc """
  The errors a pool answers a request with when it cannot lease it a
  worker, as `%Snakepit.Error{category: :pool | :timeout}` with the reason
  in `details.reason`. Pure.
  """

  alias Snakepit.{Error, Telemetry}
  alias Snakepit.Pool.State

  @doc """
  The error for a checkout refused with `reason` (`:pool_saturated`,
  `:overloaded`, `:pool_failed`, `:worker_busy`,
  `:session_worker_unavailable`) by `pool` (a `Snakepit.Pool.State`). A
  saturated pool also emits `[:snakepit, :pool, :saturated]`, a call shed
  as overloaded `[:snakepit, :pool, :shed]`.
  """
  @spec checkout_error(atom(), Snakepit.Pool.State.t(), map()) :: Error.t()
  def checkout_error(:pool_saturated, pool, _request) do
    Telemetry.emit(
      [:snakepit, :pool, :saturated],
      %{queue_size: :queue.len(pool.queue), max_queue_size: pool.config.max_queue_size},
      %{pool: pool.name}
    )

    Error.pool_error(
      "pool #{inspect(pool.name)} is saturated: #{pool.config.max_queue_size} requests already queued",
      %{pool: pool.name, reason: :pool_saturated}
    )
  end

  def checkout_error(:overloaded, pool, request) do
    retry_after = State.expected_wait(pool)

    Telemetry.emit(
      [:snakepit, :pool, :shed],
      %{queue_size: :queue.len(pool.queue), retry_after_ms: retry_after},
      %{pool: pool.name, command: Map.get(request, :command)}
    )

    Error.pool_error(
      "pool #{inspect(pool.name)} is overloaded: this call could not finish within its " <>
        "deadline (about #{retry_after} ms of queued work ahead of it); it was not run",
      %{pool: pool.name, reason: :overloaded, retry_after_ms: retry_after}
    )
  end

  def checkout_error(:pool_failed, pool, _request) do
    down = map_size(pool.down)

    Error.pool_error(
      "pool #{inspect(pool.name)} has no ready worker (#{down} of #{pool.expected} slots down, " <>
        "restarting with backoff): #{error_message(pool.startup_error)}",
      %{pool: pool.name, reason: :pool_failed, cause: pool.startup_error, slots_down: down}
    )
  end

  def checkout_error(:worker_busy, pool, request) do
    worker = State.session_worker(pool, request.session_id)

    Error.pool_error(
      "worker #{worker} of session #{inspect(request.session_id)} is busy (affinity :strict_fail_fast)",
      %{pool: pool.name, reason: :worker_busy, worker_id: worker, session_id: request.session_id}
    )
  end

  def checkout_error(:session_worker_unavailable, pool, request) do
    Error.pool_error(
      "the worker of session #{inspect(request.session_id)} is gone (it crashed, restarted or " <>
        "was recycled); its in-memory state is lost",
      %{pool: pool.name, reason: :session_worker_unavailable, session_id: request.session_id}
    )
  end

  defp error_message(%{message: m}), do: m
  defp error_message(other), do: inspect(other)

  @doc "The error of a request to a pool this pool process does not serve."
  @spec unknown_pool(term()) :: Error.t()
  def unknown_pool(name), do: Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})

  @doc "The error of a request that waited `ms` in the queue of `pool_name` without a worker."
  @spec queue_timeout(atom(), non_neg_integer()) :: Error.t()
  def queue_timeout(pool_name, ms) do
    Error.timeout_error(
      "no worker of pool #{inspect(pool_name)} was free within #{ms} ms",
      %{pool: pool_name, reason: :queue_timeout, timeout_ms: ms}
    )
  end

  @doc """
  The error of a call cut short because its pool (or Snakepit) is shutting
  down: category `:pool` with `details.reason` `:shutdown`. Not a crash:
  the crash barrier never retries it.
  """
  @spec shutdown(String.t(), map()) :: Error.t()
  def shutdown(message, details \\ %{}),
    do: Error.pool_error(message, Map.put(details, :reason, :shutdown))

  @doc """
  Is `reason` (the exit of a `GenServer.call/3` to a pool) that of a pool
  stopping on purpose?

      iex> Snakepit.Pool.Errors.shutdown_reason?({:shutdown, {GenServer, :call, []}})
      true
      iex> Snakepit.Pool.Errors.shutdown_reason?({:killed, {GenServer, :call, []}})
      false
  """
  @spec shutdown_reason?(term()) :: boolean()
  def shutdown_reason?({reason, {GenServer, :call, _}}), do: shutdown_reason?(reason)
  def shutdown_reason?(:shutdown), do: true
  def shutdown_reason?({:shutdown, _}), do: true
  def shutdown_reason?(:normal), do: true
  def shutdown_reason?(_), do: false
end
