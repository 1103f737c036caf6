defmodule Snakepit.Application.Script do
  @moduledoc """
  The lifecycle of a short-lived script or Mix task that uses Snakepit:
  start the application, wait for the pool, run the user's function, then
  clean up and stop so that no worker outlives the script. Behind
  `Snakepit.run_as_script/2`.
  """

  require Logger

  alias Snakepit.{Config, Error, Pool, RuntimeCleanup}

  @exit_modes [:none, :halt, :stop, :auto]
  @stop_modes [:if_started, :always, :never]
  # Keys whose change calls for a restart of an already running Snakepit.
  @restart_keys [
    :pooling_enabled,
    :pool_size,
    :pools,
    :adapter_args,
    :adapter_env,
    :adapter_module,
    :pool_config
  ]

  @doc "See `Snakepit.run_as_script/2`."
  @spec run((-> any()), keyword()) :: any() | {:error, term()}
  def run(fun, opts \\ [])

  def run(fun, opts) when is_function(fun, 0) and is_list(opts) do
    with {:ok, opts} <- resolve(opts), do: run_resolved(fun, opts)
  end

  def run(fun, opts) do
    {:error,
     Error.validation_error(
       "run_as_script/2 takes a function of arity 0 and a keyword list, got: " <>
         "#{inspect(fun, limit: 5)} and #{inspect(opts, limit: 10)}",
       %{option: :fun, value: fun}
     )}
  end

  defp run_resolved(fun, opts) do
    was_started = started?()
    :ok = maybe_restart(was_started, opts[:restart])

    outcome =
      case start(opts) do
        :ok -> run_user(fun)
        {:error, _} = error -> {:start_failed, error}
      end

    # Stop first, so workers go through their own graceful stop; the sweep
    # then finds only what that left behind.
    started = System.monotonic_time()

    Snakepit.Telemetry.emit(
      [:snakepit, :script, :shutdown, :start],
      %{system_time: System.system_time()},
      %{}
    )

    maybe_stop(opts, was_started)
    cleanup(opts[:cleanup_timeout])

    Snakepit.Telemetry.emit(
      [:snakepit, :script, :shutdown, :stop],
      %{duration: System.monotonic_time() - started},
      %{}
    )

    finish(outcome, opts[:exit_mode])
  end

  defp resolve(opts) do
    env_exit = System.get_env("SNAKEPIT_SCRIPT_EXIT")
    env_halt = System.get_env("SNAKEPIT_SCRIPT_HALT") in ["1", "true", "TRUE", "yes"]

    if Keyword.keyword?(opts) do
      resolve(opts, env_exit, env_halt)
    else
      invalid(:opts, opts)
    end
  end

  defp resolve(opts, env_exit, env_halt) do
    exit_mode =
      cond do
        Keyword.has_key?(opts, :exit_mode) -> opts[:exit_mode]
        env_exit not in [nil, ""] -> exit_mode_from_env(env_exit)
        Keyword.get(opts, :halt, env_halt) -> :halt
        true -> :none
      end

    resolved = [
      timeout: Keyword.get(opts, :timeout, 15_000),
      shutdown_timeout: Keyword.get(opts, :shutdown_timeout, 15_000),
      cleanup_timeout: Keyword.get(opts, :cleanup_timeout, 5_000),
      restart: Keyword.get(opts, :restart, :auto),
      await_pool: Keyword.get(opts, :await_pool, Config.pooling_enabled?()),
      exit_mode: exit_mode,
      stop_mode: Keyword.get(opts, :stop_mode, :if_started)
    ]

    validate(resolved)
  end

  defp exit_mode_from_env(value) do
    case String.downcase(value) do
      "none" ->
        :none

      "halt" ->
        :halt

      "stop" ->
        :stop

      "auto" ->
        :auto

      _other ->
        {:invalid_env, value}
    end
  end

  defp validate(opts) do
    checks = [
      {:timeout, &timeout?/1},
      {:shutdown_timeout, &timeout?/1},
      {:cleanup_timeout, &(is_integer(&1) and &1 >= 0)},
      {:restart, &(&1 in [:auto, true, false])},
      {:await_pool, &is_boolean/1},
      {:exit_mode, &(&1 in @exit_modes)},
      {:stop_mode, &(&1 in @stop_modes)}
    ]

    case Enum.find(checks, fn {key, valid?} -> not valid?.(opts[key]) end) do
      nil -> {:ok, opts}
      {key, _} -> invalid(key, opts[key])
    end
  end

  defp invalid(:exit_mode, {:invalid_env, value}) do
    {:error,
     Error.validation_error(
       "SNAKEPIT_SCRIPT_EXIT must be none, halt, stop or auto, got: #{inspect(value)}",
       %{option: :exit_mode, value: value}
     )}
  end

  defp invalid(key, value) do
    {:error,
     Error.validation_error(
       "run_as_script: invalid #{inspect(key)} option: #{inspect(value, limit: 10)}",
       %{option: key, value: value}
     )}
  end

  defp timeout?(t), do: t == :infinity or (is_integer(t) and t > 0)

  defp started?, do: List.keymember?(Application.started_applications(), :snakepit, 0)

  # :auto restarts a running Snakepit only when the config it started with
  # differs from the current one (the script changed it).
  defp maybe_restart(false, _), do: :ok
  defp maybe_restart(true, false), do: :ok
  defp maybe_restart(true, true), do: Application.stop(:snakepit)

  defp maybe_restart(true, :auto) do
    if config_snapshot() != :persistent_term.get({__MODULE__, :config}, config_snapshot()),
      do: Application.stop(:snakepit),
      else: :ok
  end

  defp config_snapshot, do: Map.new(@restart_keys, &{&1, Application.get_env(:snakepit, &1)})

  defp start(opts) do
    with {:ok, _} <- Application.ensure_all_started(:snakepit) do
      :persistent_term.put({__MODULE__, :config}, config_snapshot())
      if opts[:await_pool], do: Pool.await_ready(Pool, opts[:timeout]), else: :ok
    else
      {:error, reason} ->
        {:error,
         Error.pool_error("Snakepit did not start: #{inspect(reason)}", %{reason: reason})}
    end
  end

  defp run_user(fun) do
    {:returned, fun.()}
  rescue
    e -> {:raised, e, __STACKTRACE__}
  catch
    kind, reason -> {:thrown, kind, reason, __STACKTRACE__}
  end

  # Bounded whatever happens: the script goes on after cleanup_timeout + 1 s.
  defp cleanup(0), do: :ok

  defp cleanup(timeout) do
    task = Task.async(fn -> RuntimeCleanup.cleanup_current_run(timeout_ms: timeout) end)

    case Task.yield(task, timeout + 1_000) || Task.shutdown(task, :brutal_kill) do
      {:ok, :ok} ->
        :ok

      {:ok, {:timeout, pids}} ->
        Logger.error("run_as_script: worker processes #{inspect(pids)} survived cleanup")

      _ ->
        Logger.error("run_as_script: cleanup did not finish in #{timeout + 1_000} ms; continuing")
    end
  end

  defp maybe_stop(opts, was_started) do
    stop? =
      case opts[:stop_mode] do
        :always -> true
        :never -> false
        :if_started -> not was_started
      end

    if stop? do
      task = Task.async(fn -> Application.stop(:snakepit) end)

      if Task.yield(task, opts[:shutdown_timeout]) == nil do
        Task.shutdown(task, :brutal_kill)
        Logger.error("run_as_script: Snakepit did not stop within #{opts[:shutdown_timeout]} ms")
      end
    end
  end

  defp finish(outcome, :auto), do: finish(outcome, if(interactive?(), do: :none, else: :halt))
  defp finish({:returned, value}, :none), do: value
  defp finish({:start_failed, error}, :none), do: error
  defp finish({:raised, e, stack}, :none), do: reraise(e, stack)
  defp finish({:thrown, kind, reason, stack}, :none), do: :erlang.raise(kind, reason, stack)

  defp finish(outcome, mode) do
    status = report(outcome)
    if mode == :stop, do: System.stop(status), else: halt(status)
    # System.stop returns at once; the VM goes down shortly after.
    if status == 0, do: elem(outcome, 1), else: {:error, :stopping}
  end

  defp report({:returned, _}), do: 0

  defp report({:start_failed, {:error, error}}) do
    safe_puts(:stderr, "Snakepit failed to start: #{Exception.message(error)}")
    1
  end

  defp report({:raised, e, stack}) do
    safe_puts(:stderr, Exception.format(:error, e, stack))
    1
  end

  defp report({:thrown, kind, reason, stack}) do
    safe_puts(:stderr, Exception.format(kind, reason, stack))
    1
  end

  defp safe_puts(device, text) do
    IO.puts(device, text)
  rescue
    _ -> :ok
  end

  # A closed stdout must not hang the exit: halt flushes output, but only
  # for a bounded time before halting without flushing.
  # Ends the VM: no return, on purpose.
  @dialyzer {:nowarn_function, halt: 1}
  defp halt(status) do
    spawn(fn ->
      Process.sleep(2_000)
      :erlang.halt(status, flush: false)
    end)

    System.halt(status)
  end

  defp interactive?, do: Code.ensure_loaded?(IEx) and IEx.started?()
end
