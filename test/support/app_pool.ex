defmodule Snakepit.Test.AppPool do
  @moduledoc """
  Restarts the `:snakepit` application with a given pool configuration,
  waits until it is ready, and puts the previous configuration back when
  the test module is done. Tests drive the real application, config and
  supervision tree, not a stand-in.
  """

  import ExUnit.Callbacks, only: [on_exit: 1]

  @keys [
    :pooling_enabled,
    :pool_size,
    :pools,
    :adapter_args,
    :adapter_env,
    :pool_config,
    :affinity,
    :python_path,
    :crash_barrier,
    :heartbeat,
    :lifecycle_check_interval,
    :pool_max_queue_size,
    :pool_queue_timeout,
    :instance_name,
    :instance_token,
    :orphan_protection,
    :fork_server,
    :max_message_bytes,
    :max_nesting_depth,
    :max_integer_digits,
    :cancel_grace_ms,
    :zero_copy,
    :telemetry_memory_interval_ms,
    :cluster,
    :python_log_level
  ]

  @doc """
  Starts Snakepit with `env` (keyword of `config :snakepit` keys) and waits
  until every worker has started (not just the first one).
  """
  def start!(env, timeout \\ 30_000) do
    :ok = restart(env)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, timeout)
    :ok
  end

  @doc "Restarts Snakepit with `env` without waiting; restores on exit."
  def restart(env) do
    saved = for key <- @keys, do: {key, Application.fetch_env(:snakepit, key)}

    on_exit(fn ->
      Application.stop(:snakepit)

      for {key, value} <- saved do
        case value do
          {:ok, v} -> Application.put_env(:snakepit, key, v)
          :error -> Application.delete_env(:snakepit, key)
        end
      end

      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)

    Application.stop(:snakepit)
    # python_path is kept: a test may set it before restarting.
    for key <- @keys,
        key not in [:pooling_enabled, :python_path],
        do: Application.delete_env(:snakepit, key)

    Application.put_env(:snakepit, :pooling_enabled, true)
    for {key, value} <- env, do: Application.put_env(:snakepit, key, value)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok
  end

  @doc "The directory of the Python test adapters (`test/fixtures/python`)."
  def fixtures_dir, do: Path.expand("../fixtures/python", __DIR__)

  @doc "The adapter args of a fixture adapter class in `pool_adapters.py`."
  def fixture_adapter(class \\ "PoolTestAdapter"), do: ["--adapter", "pool_adapters.#{class}"]

  @doc "OS pids of the running workers."
  def worker_os_pids do
    Registry.select(Snakepit.Pool.Registry, [{{:_, :_, :"$1"}, [], [:"$1"]}])
    |> Enum.map(& &1.os_pid)
    |> Enum.sort()
  end

  @doc """
  Waits until exactly `n` workers are registered and none of them is in
  `opts[:without]` (replaced workers). Returns elapsed ms or `:timeout`.
  """
  def await_workers(n, opts \\ []) do
    gone = Keyword.get(opts, :without, [])

    wait_until(
      fn ->
        pids = worker_os_pids()
        length(pids) == n and Enum.all?(gone, &(&1 not in pids))
      end,
      Keyword.get(opts, :timeout, 10_000)
    )
  end

  @doc """
  Polls until `fun` returns true or `timeout_ms` passes; returns the
  elapsed milliseconds or `:timeout`. For conditions outside the VM (an OS
  process disappearing) that no message announces.
  """
  def wait_until(fun, timeout_ms, interval_ms \\ 5) do
    started = System.monotonic_time(:millisecond)
    do_wait(fun, started, started + timeout_ms, interval_ms)
  end

  defp do_wait(fun, started, deadline, interval) do
    now = System.monotonic_time(:millisecond)

    cond do
      fun.() -> now - started
      now >= deadline -> :timeout
      true -> receive(after: (interval -> do_wait(fun, started, deadline, interval)))
    end
  end
end
