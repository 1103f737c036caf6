defmodule Snakepit.WorkerProfile.Process do
  @moduledoc """
  The default profile: many single-threaded Python processes.

    * each worker is its own OS process, so a crash takes down one worker only
    * capacity 1: a worker runs one request at a time
    * native libraries are held to one thread each (`OPENBLAS_NUM_THREADS`,
      `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `NUMEXPR_NUM_THREADS`; see
      `Snakepit.PythonThreadLimits`), so many workers do not oversubscribe
      the CPU; the pool's `adapter_env` overrides them
    * the pool starts workers in batches of `startup_batch_size`, with up to
      `startup_batch_delay_ms` between batches
  """
  @behaviour Snakepit.WorkerProfile

  alias Snakepit.{PythonThreadLimits, WorkerProfile}

  @impl true
  def start_worker(args), do: WorkerProfile.start_with(args, &worker_config/1)

  @doc "The pool config a worker of this profile runs with."
  @spec worker_config(map()) :: map()
  def worker_config(config) do
    limits = PythonThreadLimits.resolve(Snakepit.Defaults.python_thread_limits())

    threads = [
      {"OPENBLAS_NUM_THREADS", to_string(limits.openblas)},
      {"OMP_NUM_THREADS", to_string(limits.omp)},
      {"MKL_NUM_THREADS", to_string(limits.mkl)},
      {"NUMEXPR_NUM_THREADS", to_string(limits.numexpr)}
    ]

    config
    |> Map.put(:adapter_env, WorkerProfile.worker_env(config, threads))
    |> Map.put(:worker_capacity, 1)
  end

  @impl true
  def stop_worker(worker), do: WorkerProfile.stop(worker)

  @impl true
  def execute_request(worker, request, timeout),
    do: WorkerProfile.execute_request(worker, request, timeout)

  @impl true
  def get_capacity(_worker), do: 1

  @impl true
  def get_load(worker), do: WorkerProfile.load(worker)

  @impl true
  def health_check(worker), do: WorkerProfile.health_check(worker)

  @impl true
  def get_metadata(worker) do
    with {:ok, meta} <- WorkerProfile.metadata(worker),
         do: {:ok, Map.merge(meta, %{profile: :process, capacity: 1})}
  end
end
