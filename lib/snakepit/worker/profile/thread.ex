defmodule Snakepit.WorkerProfile.Thread do
  @moduledoc """
  Few multi-threaded Python processes (best with free-threaded Python 3.13+).

    * each worker runs `--mode threaded --max-workers N` (added unless the
      pool's `adapter_args` already choose a mode), so up to
      `threads_per_worker` requests run concurrently in one process
    * capacity `threads_per_worker`: the pool schedules that many requests
      on a worker at once
    * the adapter must be thread-safe (`__thread_safe__ = True`, e.g. a
      `ThreadSafeAdapter`); the worker refuses to start otherwise
    * `thread_safety_checks: true` sets `SNAKEPIT_THREAD_SAFETY_CHECKS=1`
      for the adapter's own runtime checks
    * all workers start at once (there are few)
  """
  @behaviour Snakepit.WorkerProfile

  alias Snakepit.{Config, WorkerProfile}

  @impl true
  def start_worker(args), do: WorkerProfile.start_with(args, &worker_config/1)

  @doc "The pool config a worker of this profile runs with."
  @spec worker_config(map()) :: map()
  def worker_config(config) do
    threads =
      Map.get(config, :threads_per_worker) ||
        Snakepit.Defaults.config_default_threads_per_worker()

    args = config.adapter_args

    args =
      if "--mode" in args or "--max-workers" in args,
        do: args,
        else: args ++ ["--mode", "threaded", "--max-workers", to_string(threads)]

    checks =
      if Map.get(config, :thread_safety_checks),
        do: [{"SNAKEPIT_THREAD_SAFETY_CHECKS", "1"}],
        else: []

    config
    |> Map.put(:adapter_args, args)
    |> Map.put(:adapter_env, WorkerProfile.worker_env(config, checks))
    |> Map.put(:worker_capacity, threads)
  end

  @doc "True for a pool config of this profile."
  @spec applies?(map()) :: boolean()
  def applies?(config), do: Config.thread_profile?(config)

  @impl true
  def stop_worker(worker), do: WorkerProfile.stop(worker)

  @impl true
  def execute_request(worker, request, timeout),
    do: WorkerProfile.execute_request(worker, request, timeout)

  @impl true
  def get_capacity(worker) do
    case WorkerProfile.metadata(worker) do
      {:ok, %{capacity: n}} -> n
      _ -> Snakepit.Defaults.config_default_threads_per_worker()
    end
  end

  @impl true
  def get_load(worker), do: WorkerProfile.load(worker)

  @impl true
  def health_check(worker), do: WorkerProfile.health_check(worker)

  @impl true
  def get_metadata(worker) do
    with {:ok, meta} <- WorkerProfile.metadata(worker),
         do: {:ok, Map.put(meta, :profile, :thread)}
  end
end
