defmodule Snakepit.Worker.Handshake do
  @moduledoc """
  What a `Snakepit.GRPCWorker` does when its Python process prints its
  readiness line, `SNAKEPIT_READY <address> [lane=<path>]`: opens the gRPC
  channel and, when offered, the call lane (`Snakepit.Transport.LaneReader`),
  registers the worker in `Snakepit.Pool.Registry`, tells its pool (or the
  caller of a standalone start) and emits the `[:snakepit, :pool, :worker,
  :spawned]` and `[:snakepit, :grpc, :connection, :established]` events.
  """

  require Logger

  alias Snakepit.{Native, Telemetry}

  @typedoc "What the worker holds once connected."
  @type connected :: %{
          channel: reference(),
          lane: reference() | nil,
          lane_reader: pid() | nil,
          address: String.t()
        }

  @doc """
  Connects to the worker that printed `ready` (what follows
  `SNAKEPIT_READY `) and announces it: `{:ok, connected}`, or
  `{:error, cause}` when it cannot be reached.

  `worker` is the `Snakepit.GRPCWorker`'s state (`:id`, `:pool_name`,
  `:pool_pid`, `:starter`, `:os_pid`, `:config`, `:started_at`).
  """
  @spec connect(map(), String.t()) :: {:ok, connected()} | {:error, String.t()}
  def connect(worker, ready) do
    {address, lane_path} = parse_ready(ready)

    with {:ok, channel} <- grpc_connect(address),
         {:ok, lane, lane_reader} <- open_lane(lane_path, worker) do
      announce(worker, %{id: worker.id, pid: self(), channel: channel, lane: lane}, address)
      {:ok, %{channel: channel, lane: lane, lane_reader: lane_reader, address: address}}
    else
      {:error, message} ->
        {:error, "cannot connect to the worker (#{String.trim(ready)}): #{message}"}
    end
  end

  defp grpc_connect(address) do
    case Native.grpc_connect(address) do
      {:ok, channel} -> {:ok, channel}
      {:error, reason} -> {:error, Snakepit.Error.Native.to_error(reason).message}
    end
  end

  # "ADDRESS" or "ADDRESS lane=PATH".
  defp parse_ready(ready) do
    case String.split(ready) do
      [address | extras] ->
        lane =
          Enum.find_value(extras, fn
            "lane=" <> path -> path
            _ -> nil
          end)

        {address, lane}

      [] ->
        {"", nil}
    end
  end

  # A worker that was asked for a lane and offers none (an adapter whose
  # program does not know --lane) is called over gRPC.
  defp open_lane(nil, worker) do
    if Map.get(worker.config, :call_transport) == :lane,
      do: Logger.debug("[#{worker.id}] the worker offers no call lane; calls use gRPC")

    {:ok, nil, nil}
  end

  defp open_lane(path, _worker) do
    case Snakepit.Transport.LaneReader.start_link(path) do
      {:ok, reader, lane} -> {:ok, lane, reader}
      {:error, message} -> {:error, "cannot open the call lane: #{message}"}
    end
  end

  defp announce(worker, connection, address) do
    connection =
      Map.merge(connection, %{
        os_pid: worker.os_pid,
        capacity: Snakepit.WorkerProfile.capacity(worker.config)
      })

    Snakepit.Pool.Registry.register_worker(
      worker.id,
      registry_metadata(worker, connection, address)
    )

    if worker.pool_pid,
      do: send(worker.pool_pid, {:worker_ready, worker.pool_name, connection})

    if worker.starter, do: send(worker.starter, {:snakepit_worker_ready, self()})

    elapsed = System.monotonic_time() - worker.started_at

    Telemetry.emit(
      [:snakepit, :pool, :worker, :spawned],
      %{
        duration: System.convert_time_unit(elapsed, :native, :millisecond),
        system_time: System.system_time()
      },
      %{node: node(), worker_id: worker.id, pool_name: worker.pool_name, os_pid: worker.os_pid}
    )

    Telemetry.emit(
      [:snakepit, :grpc, :connection, :established],
      %{duration: elapsed, system_time: System.system_time()},
      %{node: node(), worker_id: worker.id, pool_name: worker.pool_name, address: address}
    )
  end

  defp registry_metadata(worker, connection, address) do
    %{
      worker_module: Snakepit.GRPCWorker,
      pool_name: worker.pool_name,
      pool_identifier: Map.get(worker.config, :pool_identifier),
      adapter_module: Map.get(worker.config, :adapter_module),
      worker_profile: Map.get(worker.config, :worker_profile, :process),
      capacity: connection.capacity,
      os_pid: worker.os_pid,
      address: String.trim(address)
    }
  end
end
