defmodule Snakepit.Application do
  @moduledoc """
  Starts Snakepit: the ETS owner, the registries, the process registry
  (which first kills what earlier crashed runs left behind), the shutdown
  sweeper, the zero-copy region directory and the tool bridge (`Snakepit.Bridge.ToolRegistry`,
  `Snakepit.GRPC.BridgeServer`) always; the worker supervisor and the pool
  when `pooling_enabled` is not false.

  The pool and its workers sit under one `:one_for_all` supervisor, so a
  crash of the pool takes its workers down cleanly with it (their Python
  processes included) and both come back together.
  """
  use Application

  require Logger

  @impl true
  def start(_type, _args) do
    # Upstream settings that do nothing here: said once, naming what does.
    _ = Snakepit.Config.Compat.warn_at_start()

    with :ok <- check_platform(),
         :ok <- check_settings(),
         :ok <- check_tcp_host(),
         {:ok, zero_copy} <- zero_copy_config() do
      start_tree(zero_copy)
    end
  end

  defp check_platform do
    with {:error, message} <- Snakepit.OS.Platform.check(),
         do: {:error, {:unsupported_platform, message}}
  end

  # TCP listeners bind to loopback unless explicitly allowed otherwise.
  defp check_tcp_host do
    if Snakepit.Defaults.worker_transport() == :tcp do
      case Snakepit.Config.tcp_host() do
        {:ok, host} ->
          unless Snakepit.Config.loopback?(host) do
            # Always shown, whatever Snakepit's own log level: a security choice.
            Logger.warning(
              "Snakepit listens on #{host}, which other machines may reach " <>
                "(allow_non_loopback_bind: true); calls still need the VM's secret, unencrypted"
            )
          end

          :ok

        {:error, message} ->
          {:error, {:invalid_config, message}}
      end
    else
      :ok
    end
  end

  # Every global setting's type (value limits' ranges included), and a
  # warning for each key no table knows.
  defp check_settings do
    with {:error, message} <- Snakepit.Config.Settings.check_at_start(),
         do: {:error, {:invalid_config, message}}
  end

  defp zero_copy_config do
    with {:error, message} <- Snakepit.ZeroCopy.Settings.config(),
         do: {:error, {:invalid_config, message}}
  end

  defp start_tree(zero_copy) do
    Snakepit.Telemetry.Correlation.init_vm_prefix()
    Snakepit.Telemetry.choose_backend()
    Snakepit.Pool.CallSettings.refresh()
    Snakepit.Native.set_max_message_bytes(Snakepit.Defaults.max_message_bytes())

    Snakepit.Native.set_value_limits(
      Snakepit.Defaults.max_nesting_depth(),
      Snakepit.Defaults.max_integer_digits()
    )

    Snakepit.OS.RuntimeDir.create()
    # Before any worker starts: workers are told how regions are shared.
    Snakepit.ZeroCopy.Settings.open(zero_copy)

    base =
      [
        Snakepit.ETSOwner,
        {Registry, keys: :unique, name: Snakepit.Pool.Registry},
        # Which pool process serves each pool name (the configured pools'
        # and those host apps start in their own trees).
        Snakepit.Pool.Names,
        Snakepit.Pool.Worker.StarterRegistry,
        # Kills what earlier runs left behind before any worker starts.
        Snakepit.Pool.ProcessRegistry,
        # Stopped after the pools: sweeps up anything of this run still alive.
        Snakepit.Pool.ApplicationCleanup,
        # The tool bridge comes before the pool: workers register their
        # tools with it while they start.
        Snakepit.Bridge.ToolRegistry,
        {Task.Supervisor, name: Snakepit.Bridge.TaskSupervisor},
        Snakepit.Telemetry.GrpcStream,
        Snakepit.GRPC.BridgeServer,
        # Before the pools, so it outlives their workers at shutdown.
        Snakepit.Worker.ForkServer
      ] ++ pooling_services()

    pool =
      if Snakepit.Config.pooling_enabled?() do
        [
          %{
            id: Snakepit.Pool.Supervisor,
            type: :supervisor,
            start:
              {Supervisor, :start_link,
               [
                 [Snakepit.Pool.WorkerSupervisor, {Snakepit.Pool, []}],
                 [strategy: :one_for_all, name: Snakepit.Pool.Supervisor]
               ]}
          }
        ]
      else
        []
      end

    # Last, so that at shutdown this node leaves the cluster before its pools stop.
    cluster = Snakepit.Cluster.child_specs()

    with {:ok, _} = started <-
           Supervisor.start_link(base ++ pool ++ cluster,
             strategy: :one_for_one,
             name: Snakepit.Supervisor
           ) do
      # `config :snakepit, :opentelemetry, enabled: true` alone turns spans on.
      Snakepit.Telemetry.OpenTelemetry.setup()
      started
    end
  end

  # Issue 4: sessions and worker recycling, started whether or not pooling
  # is on (the session store serves the tool bridge too).
  defp pooling_services do
    [Snakepit.Bridge.SessionStore, Snakepit.Worker.LifecycleManager]
  end

  @impl true
  def stop(_state) do
    Snakepit.ZeroCopy.Settings.close()
    Snakepit.OS.RuntimeDir.remove()
  end
end
