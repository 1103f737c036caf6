defmodule Snakepit.Pool.Worker.Starter do
  @moduledoc """
  Keeps one worker slot filled for as long as its pool lives.

  The starter owns exactly one `Snakepit.GRPCWorker` (and so one Python
  process). When the worker ends, for whatever reason short of the
  starter's own shutdown, the starter starts a fresh one, so the pool never
  manages restarts itself and never loses capacity for good:

    * a worker that was ready for at least `worker_restart_stable_ms`
      before it ended is replaced at once;
    * a worker that ended sooner (it failed to start, or crashed soon after
      starting) counts as a failure in a row; the first is replaced at
      once, each further one waits `worker_restart_backoff_base_ms`
      doubled per failure, capped at `worker_restart_backoff_max_ms`
      (see `restart_delay/2`);
    * a worker killed from outside (SIGKILL or SIGTERM from someone else,
      or taken down by a fork server that died) or stopped by a hard stop
      (a cancelled call that would not stop) is replaced at once and counts
      as no failure: nothing says the next one will fail.

  Each restart is announced to the pool (`{:worker_restarting, pool, id,
  info}`) and as `[:snakepit, :worker, :restart_scheduled]` with the delay
  and the number of failures in a row. On shutdown the starter stops its
  worker (SIGTERM to Python, then SIGKILL) before it exits itself.
  """
  use GenServer

  alias Snakepit.{Defaults, Telemetry}
  alias Snakepit.Worker.ExitStatus

  @type restart_policy :: %{
          base_ms: non_neg_integer(),
          max_ms: non_neg_integer(),
          stable_ms: non_neg_integer()
        }

  @doc false
  def start_link(args) do
    GenServer.start_link(__MODULE__, args, name: via_name(args.id))
  end

  @doc false
  def child_spec(args) do
    %{
      id: {__MODULE__, args.id},
      start: {__MODULE__, :start_link, [args]},
      type: :worker,
      restart: :temporary,
      # The worker's own shutdown (graceful window and SIGKILL) plus room.
      shutdown: Snakepit.GRPCWorker.supervisor_shutdown_timeout() + 1_000
    }
  end

  @doc "The via tuple naming the starter of `worker_id`."
  @spec via_name(String.t()) :: {:via, Registry, {atom(), String.t()}}
  def via_name(worker_id), do: Snakepit.Pool.Worker.StarterRegistry.via_tuple(worker_id)

  @doc "The starter of `worker_id`, if running."
  @spec whereis(String.t()) :: pid() | nil
  def whereis(worker_id), do: GenServer.whereis(via_name(worker_id))

  @doc "The pid of the starter's current worker, or nil while it waits to restart one."
  @spec worker_pid(GenServer.server()) :: pid() | nil
  def worker_pid(starter), do: GenServer.call(starter, :worker_pid)

  @doc """
  Stops the current worker and starts a fresh one at once: `{:ok, pid}`, or
  `{:error, reason}` when the new worker cannot be started.
  """
  @spec restart_worker(GenServer.server()) :: {:ok, pid()} | {:error, term()}
  def restart_worker(starter),
    do:
      GenServer.call(starter, :restart_worker, Snakepit.GRPCWorker.supervisor_shutdown_timeout())

  @doc """
  The restart policy in effect: `worker_restart_backoff_base_ms`,
  `worker_restart_backoff_max_ms` and `worker_restart_stable_ms` from
  `Snakepit.Defaults`.
  """
  @spec restart_policy() :: restart_policy()
  def restart_policy do
    %{
      base_ms: Defaults.worker_restart_backoff_base_ms(),
      max_ms: Defaults.worker_restart_backoff_max_ms(),
      stable_ms: Defaults.worker_restart_stable_ms()
    }
  end

  @doc """
  How long to wait before the next start after `failures` failures in a
  row (counting the one that just happened). Pure.

      iex> policy = %{base_ms: 100, max_ms: 1_000, stable_ms: 1_000}
      iex> Enum.map(0..6, &Snakepit.Pool.Worker.Starter.restart_delay(&1, policy))
      [0, 0, 100, 200, 400, 800, 1000]
  """
  @spec restart_delay(non_neg_integer(), restart_policy()) :: non_neg_integer()
  def restart_delay(failures, _policy) when failures <= 1, do: 0

  def restart_delay(failures, %{base_ms: base, max_ms: max}) do
    # Capped before the shift so a long outage cannot overflow anything.
    min(base * Bitwise.bsl(1, min(failures - 2, 30)), max)
  end

  @doc """
  Failures in a row after a worker ended: reset when it had been ready for
  `stable_ms` (its end is no failure of the slot), one more otherwise.
  `ready_for_ms` is nil when the worker never became ready. Pure.

      iex> policy = %{base_ms: 100, max_ms: 1_000, stable_ms: 1_000}
      iex> Snakepit.Pool.Worker.Starter.next_failures(3, nil, policy)
      4
      iex> Snakepit.Pool.Worker.Starter.next_failures(3, 5_000, policy)
      1
  """
  @spec next_failures(non_neg_integer(), non_neg_integer() | nil, restart_policy()) ::
          pos_integer()
  def next_failures(_failures, ready_for_ms, %{stable_ms: stable})
      when is_integer(ready_for_ms) and ready_for_ms >= stable,
      do: 1

  def next_failures(failures, _ready_for_ms, _policy), do: failures + 1

  # -- server -------------------------------------------------------------------

  @impl true
  def init(args) do
    Process.flag(:trap_exit, true)

    state = %{
      args: args,
      worker: nil,
      ready_at: nil,
      failures: 0,
      timer: nil,
      policy: restart_policy()
    }

    # The first worker starts before start_link returns, as under a
    # supervisor: the pool learns of a bad start from the worker itself.
    case start_worker(state) do
      {:ok, state} -> {:ok, state}
      {:error, reason} -> {:ok, schedule_restart(state, {:start_failed, reason}, nil)}
    end
  end

  @impl true
  def handle_call(:worker_pid, _from, state), do: {:reply, state.worker, state}

  def handle_call(:restart_worker, _from, state) do
    state = stop_worker(state)
    state = cancel_timer(state)

    case start_worker(%{state | failures: 0}) do
      {:ok, state} -> {:reply, {:ok, state.worker}, state}
      {:error, reason} = error -> {:reply, error, schedule_restart(state, reason, nil)}
    end
  end

  @impl true
  def handle_info({:snakepit_worker_ready, pid}, %{worker: pid} = state),
    do: {:noreply, %{state | ready_at: now()}}

  def handle_info({:EXIT, pid, reason}, %{worker: pid} = state) do
    ready_for = if state.ready_at, do: now() - state.ready_at
    {:noreply, schedule_restart(%{state | worker: nil, ready_at: nil}, reason, ready_for)}
  end

  def handle_info(:restart, state) do
    state = %{state | timer: nil}

    case start_worker(state) do
      {:ok, state} -> {:noreply, state}
      {:error, reason} -> {:noreply, schedule_restart(state, {:start_failed, reason}, nil)}
    end
  end

  # The pool (our link through the supervisor tree) going down takes us
  # with it; anything else linked is not ours to react to.
  def handle_info({:EXIT, _other, _reason}, state), do: {:noreply, state}
  def handle_info(_other, state), do: {:noreply, state}

  @impl true
  def terminate(_reason, state) do
    stop_worker(state)
    :ok
  end

  # Secrets travel in the worker's config (adapter_env); never print them.
  @impl true
  def format_status(status), do: Snakepit.Redact.status(status)

  defp start_worker(state) do
    module = Map.get(state.args, :worker_module, Snakepit.GRPCWorker)

    case module.start_link(Map.put(state.args, :starter, self())) do
      {:ok, pid} -> {:ok, %{state | worker: pid, ready_at: nil}}
      {:error, reason} -> {:error, reason}
      :ignore -> {:error, :ignore}
    end
  end

  defp schedule_restart(state, reason, ready_for) do
    if not_a_failure?(reason),
      do: restart_now(state, reason),
      else: back_off(state, reason, ready_for)
  end

  # A hard stop, or a kill from outside (kill -9, the fork server going
  # down), is nothing the slot did: restart at once, count nothing.
  defp not_a_failure?({:shutdown, :hard_stop}), do: true

  defp not_a_failure?({:shutdown, {tag, status}}) when tag in [:python_exited, :startup_failed],
    do: ExitStatus.killed_from_outside?(status)

  defp not_a_failure?(_reason), do: false

  defp restart_now(state, reason) do
    announce(state, 0, reason)
    send(self(), :restart)
    state
  end

  defp back_off(state, reason, ready_for) do
    failures = next_failures(state.failures, ready_for, state.policy)
    delay = restart_delay(failures, state.policy)
    announce(%{state | failures: failures}, delay, reason)
    timer = Process.send_after(self(), :restart, delay)
    %{state | failures: failures, timer: timer}
  end

  defp announce(state, delay, reason) do
    info = %{delay_ms: delay, failures: state.failures, reason: reason}
    args = state.args

    if pool = Map.get(args, :pool_pid),
      do: send(pool, {:worker_restarting, args.pool_name, args.id, info})

    Telemetry.emit(
      [:snakepit, :worker, :restart_scheduled],
      %{delay_ms: delay, failures: state.failures},
      %{pool: args.pool_name, worker_id: args.id, reason: reason}
    )
  end

  defp cancel_timer(%{timer: nil} = state), do: state

  defp cancel_timer(state) do
    Process.cancel_timer(state.timer)
    %{state | timer: nil}
  end

  # As a supervisor would: :shutdown, then :kill after the worker's
  # shutdown window.
  defp stop_worker(%{worker: nil} = state), do: state

  defp stop_worker(%{worker: pid} = state) do
    Process.exit(pid, :shutdown)

    receive do
      {:EXIT, ^pid, _} -> :ok
    after
      Snakepit.GRPCWorker.supervisor_shutdown_timeout() ->
        Process.exit(pid, :kill)

        receive do
          {:EXIT, ^pid, _} -> :ok
        end
    end

    %{state | worker: nil, ready_at: nil}
  end

  defp now, do: System.monotonic_time(:millisecond)
end
