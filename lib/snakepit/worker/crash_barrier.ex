defmodule Snakepit.CrashBarrier do
  @moduledoc """
  What happens when a worker crashes in the middle of a call.

  A call whose worker's Python process died under it is a *crash* (as
  opposed to an exception raised by Python, which is an ordinary error).
  The crash barrier then:

    * classifies the crash from the exit status (`:killed`, `:segfault`,
      `:abort`, `:exit`, ...),
    * taints the worker for `taint_ms`, so the pool routes around it while
      its replacement settles (see `Snakepit.Worker.TaintRegistry`),
    * retries the call on *another* worker, after `backoff_ms`, up to
      `max_retries` times, when the call is idempotent: `idempotent: true`
      in its args or its options. A call that is not idempotent returns the
      crash as `{:error, %Snakepit.Error{category: :worker, details: %{reason: :worker_crash}}}`.

  ## Configuration

      config :snakepit, :crash_barrier,
        enabled: true,
        retry: :idempotent,   # :idempotent | :never
        max_retries: 1,
        taint_ms: 5_000,
        backoff_ms: [50, 100, 200]

  A pool may override any of these with its own `crash_barrier:` key. The
  barrier is off unless enabled; without it a crash is still returned as a
  `:worker_crash` error, but nothing is tainted or retried.

  The policy functions are pure; `taint_worker/4` writes the registry.
  """

  alias Snakepit.{Defaults, Error, Telemetry}
  alias Snakepit.Worker.TaintRegistry

  @type config :: %{
          enabled: boolean(),
          retry: :idempotent | :never,
          max_retries: non_neg_integer(),
          taint_ms: non_neg_integer(),
          backoff_ms: [non_neg_integer()]
        }

  @doc """
  The crash barrier settings of a pool: the defaults, then
  `config :snakepit, :crash_barrier`, then the pool's `crash_barrier:` key.

      iex> Snakepit.CrashBarrier.config(%{crash_barrier: %{enabled: true, taint_ms: 10}})
      %{enabled: true, retry: :idempotent, max_retries: 1, taint_ms: 10, backoff_ms: [50, 100, 200]}
  """
  @spec config(map()) :: config()
  def config(pool_config \\ %{}) do
    defaults = %{
      enabled: false,
      retry: :idempotent,
      max_retries: Defaults.crash_barrier_max_restarts(),
      taint_ms: Defaults.crash_barrier_taint_duration_ms(),
      backoff_ms: Defaults.crash_barrier_backoff_ms()
    }

    global = Snakepit.Defaults.crash_barrier() |> Map.new()
    local = Map.get(pool_config, :crash_barrier) || %{}

    defaults
    |> Map.merge(Map.take(global, Map.keys(defaults)))
    |> Map.merge(Map.take(Map.new(local), Map.keys(defaults)))
  end

  @doc "Is the barrier on?"
  @spec enabled?(map()) :: boolean()
  def enabled?(config), do: Map.get(config, :enabled, false) == true

  @doc """
  Does the call declare itself idempotent (`idempotent: true` or
  `"idempotent" => true` in its args)?

      iex> Snakepit.CrashBarrier.idempotent?(%{idempotent: true, x: 1})
      true
      iex> Snakepit.CrashBarrier.idempotent?(%{"idempotent" => "yes"})
      false
  """
  @spec idempotent?(map()) :: boolean()
  def idempotent?(args) when is_map(args),
    do: Map.get(args, :idempotent) == true or Map.get(args, "idempotent") == true

  def idempotent?(_args), do: false

  @doc """
  May attempt number `attempt + 1` run? `attempt` counts the retries
  already made.

      iex> config = Snakepit.CrashBarrier.config(%{crash_barrier: %{enabled: true, max_retries: 2}})
      iex> for a <- 0..2, do: Snakepit.CrashBarrier.retry_allowed?(config, true, a)
      [true, true, false]
      iex> Snakepit.CrashBarrier.retry_allowed?(config, false, 0)
      false
  """
  @spec retry_allowed?(map(), boolean(), non_neg_integer()) :: boolean()
  def retry_allowed?(config, idempotent, attempt) do
    enabled?(config) and idempotent == true and config.retry != :never and
      attempt < config.max_retries
  end

  @doc """
  Backoff (ms) before retry number `attempt + 1`; the last step repeats.

      iex> config = %{backoff_ms: [50, 100]}
      iex> Enum.map(0..3, &Snakepit.CrashBarrier.retry_backoff(config, &1))
      [50, 100, 100, 100]
  """
  @spec retry_backoff(map(), non_neg_integer()) :: non_neg_integer()
  def retry_backoff(%{backoff_ms: []}, _attempt), do: 0

  def retry_backoff(%{backoff_ms: steps}, attempt),
    do: Enum.at(steps, attempt) || List.last(steps)

  @doc """
  The crash behind a call's result, or nil when the result is no crash.

  A crash is an error whose `details.reason` is `:worker_crash` (what
  `Snakepit.Pool` returns when the worker's process died during the call).
  The info carries the worker id, the exit status and its classification.
  """
  @spec crash_info(term(), map()) :: map() | nil
  def crash_info({:error, %Error{details: %{reason: :worker_crash} = details}}, _config) do
    status = Map.get(details, :exit_status, :unknown)

    %{
      worker_id: Map.get(details, :worker_id),
      exit_status: status,
      classification: classify(status)
    }
  end

  def crash_info(_result, _config), do: nil

  @doc """
  What an exit status says about a crash (see `Snakepit.Worker.ExitStatus.classify/1`).

      iex> Snakepit.CrashBarrier.classify({:signaled, 9})
      :killed
      iex> Snakepit.CrashBarrier.classify({:exited, 3})
      :exit
  """
  @spec classify(term()) :: atom()
  defdelegate classify(status), to: Snakepit.Worker.ExitStatus

  @doc """
  The error a call returns for a crash it could not (or may not) retry.
  """
  @spec normalize_crash_error(term(), map() | nil) :: term()
  def normalize_crash_error({:error, %Error{} = error} = result, info) when is_map(info) do
    if error.details[:reason] == :worker_crash,
      do: {:error, %{error | details: Map.put(error.details, :crash, info)}},
      else: result
  end

  def normalize_crash_error(result, _info), do: result

  @doc """
  Taints `worker_id` of `pool_name` for `config.taint_ms` and emits
  `[:snakepit, :worker, :tainted]`.
  """
  @spec taint_worker(atom(), String.t(), map(), map()) :: :ok
  def taint_worker(pool_name, worker_id, info, config) do
    TaintRegistry.taint_worker(worker_id,
      duration_ms: config.taint_ms,
      pool: pool_name,
      exit_status: Map.get(info, :exit_status),
      reason: Map.get(info, :classification)
    )

    Telemetry.emit(
      [:snakepit, :worker, :tainted],
      %{duration_ms: config.taint_ms},
      %{pool: pool_name, worker_id: worker_id, reason: Map.get(info, :classification)}
    )
  end

  @doc "Is `worker_id` tainted?"
  @spec worker_tainted?(String.t()) :: boolean()
  def worker_tainted?(worker_id), do: TaintRegistry.worker_tainted?(worker_id)

  @doc """
  Emits `[:snakepit, :worker, :restarted]` when a tainted worker is back
  (its replacement process is ready).
  """
  @spec maybe_emit_restart(atom(), String.t()) :: :ok
  def maybe_emit_restart(pool_name, worker_id) do
    if match?({:ok, _}, TaintRegistry.consume_restart(worker_id)) do
      Telemetry.emit([:snakepit, :worker, :restarted], %{}, %{
        pool: pool_name,
        worker_id: worker_id
      })
    end

    :ok
  end
end
