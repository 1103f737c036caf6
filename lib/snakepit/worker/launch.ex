defmodule Snakepit.Worker.Launch do
  @moduledoc """
  Starts a worker's Python process: its command line (the pool's adapter
  decides it, with the worker's identity flags), its environment (the
  slot's own variables included), forked from a warm fork server when one
  serves this interpreter, else spawned by the native core (own session
  and process group, parent-death signal, guard). Its exit and output come
  to the calling `Snakepit.GRPCWorker` as `{:snakepit_process, os_pid, event}`.
  """

  require Logger

  alias Snakepit.{Config, Defaults, Native, PythonRuntime, RunID}

  alias Snakepit.OS.RuntimeDir
  alias Snakepit.Pool.ProcessRegistry
  alias Snakepit.Worker.{Output, SlotEnv}

  @doc """
  Starts the Python process of worker `id` with the pool `config`:
  `{:ok, os_pid, handle}`, or `{:error, cause}` saying why not. The process
  is in `Snakepit.Pool.ProcessRegistry` from before the spawn, so a crash
  right after still leaves a trace.
  """
  @spec start(String.t(), map()) :: {:ok, pos_integer(), reference()} | {:error, String.t()}
  def start(id, config) do
    # The pool's adapter_module decides how the worker's process starts.
    adapter = config.adapter_module

    with {:ok, slot_env} <- slot_env(config),
         {:ok, python} <- Snakepit.Adapter.executable(adapter),
         argv = [
           python | Snakepit.Adapter.argv(adapter, config.adapter_args, identity(id, config))
         ],
         env = PythonRuntime.worker_env(with_slot_env(config.adapter_env, slot_env)),
         :ok <- ProcessRegistry.reserve_worker(id),
         {:ok, {os_pid, handle}} <- spawn(python, argv, env, slot_env, config) do
      # From now on at most Output.window() output lines are in flight to
      # the caller; the native core drops (and counts) the rest.
      _ = Native.process_output_ack(handle, 0, Output.window())
      :ok = ProcessRegistry.activate_worker(id, self(), os_pid, RunID.current())
      {:ok, os_pid, handle}
    else
      {:error, {:slot_env, message}} -> {:error, message}
      {:error, reason} -> {:error, "cannot start Python: #{format_reason(reason)}"}
    end
  end

  # The slot's own variables (Snakepit.Worker.SlotEnv), asked at every
  # start, so a restarted worker gets its slot's environment again.
  defp slot_env(config) do
    case SlotEnv.resolve(config, Map.get(config, :slot_index)) do
      {:ok, env} -> {:ok, env}
      {:error, message} -> {:error, {:slot_env, message}}
    end
  end

  defp with_slot_env(env, []), do: env

  defp with_slot_env(env, slot_env),
    do: Enum.reject(env, fn {k, _} -> List.keymember?(slot_env, k, 0) end) ++ slot_env

  defp spawn(python, argv, env, slot_env, config) do
    # Off only in tests that must leave orphans behind on purpose; those
    # workers are never forked (a fork server's workers die with it).
    orphan_protection = Defaults.orphan_protection()
    cwd = Map.get(config, :cwd)
    fork? = orphan_protection == true and Config.fork_server?()

    own = Enum.map(slot_env, &elem(&1, 0))

    case if(fork?, do: forked(python, argv, env, cwd, own), else: :spawn) do
      {:ok, _} = forked ->
        forked

      :spawn ->
        case Native.spawn_process(python, argv, env, cwd, self(), %{
               orphan_protection: orphan_protection,
               with_secret: true
             }) do
          {:ok, _} = ok -> ok
          {:error, reason} -> {:error, Snakepit.Error.Native.to_error(reason).message}
        end
    end
  end

  # A worker forked from a warm fork server, or :spawn to spawn it directly.
  defp forked(python, argv, env, cwd, own) do
    case Snakepit.Worker.ForkServer.spawn(python, argv, env, cwd, own) do
      {:ok, _} = ok ->
        ok

      {:error, reason} ->
        Logger.debug("fork server not used (#{inspect(reason)}); spawning the worker directly")
        :spawn
    end
  end

  defp format_reason(reason) when is_binary(reason), do: reason
  defp format_reason(reason), do: inspect(reason)

  defp identity(id, config) do
    address =
      case Defaults.worker_transport() do
        :tcp -> Config.tcp_listen_address(Defaults.tcp_host())
        :unix -> RuntimeDir.socket_address(id)
      end

    [
      address: address,
      lane: if(Map.get(config, :call_transport) == :lane, do: RuntimeDir.lane_path(id)),
      "worker-id": id,
      "snakepit-run-id": RunID.current(),
      "instance-name": Config.instance_name_identifier(),
      "elixir-address": Snakepit.GRPC.BridgeServer.address()
    ]
  end
end
