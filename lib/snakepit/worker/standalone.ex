defmodule Snakepit.Worker.Standalone do
  @moduledoc """
  Starts one `Snakepit.GRPCWorker` outside any pool (upstream's
  `GRPCWorker.start_link(adapter: ...)`): checks the options, builds a pool
  config from them, and waits for the worker to be ready or to fail. See
  `Snakepit.GRPCWorker.start_link/1` for the options.
  """

  alias Snakepit.{Config, Error}

  # `:port` is accepted and ignored: ports are assigned by the OS here.
  @options [
    :adapter,
    :id,
    :pool_name,
    :adapter_args,
    :adapter_env,
    :startup_timeout,
    :worker_config,
    :port
  ]

  @doc """
  Starts the worker and returns once its Python process is ready:
  `{:ok, pid}` (linked to the caller) or `{:error, error}` (nothing left
  running).
  """
  @spec start(keyword()) :: {:ok, pid()} | {:error, Error.t()}
  def start(opts) do
    with :ok <- check(opts),
         {:ok, config} <- config(opts) do
      id = Keyword.get(opts, :id) || "standalone_#{System.unique_integer([:positive])}"
      args = %{id: id, pool_name: config.name, pool_pid: nil, starter: self(), config: config}

      # Unlinked until ready, so a failed start is an error, not an exit.
      case GenServer.start(Snakepit.GRPCWorker, args) do
        {:ok, pid} ->
          await(pid, config.startup_timeout + 5_000)

        {:error, reason} ->
          {:error, Error.worker_error("cannot start the worker: #{inspect(reason)}")}
      end
    end
  end

  defp check(opts) do
    cond do
      not Keyword.keyword?(opts) ->
        invalid("options must be a keyword list, got: #{inspect(opts)}")

      (unknown = Keyword.keys(opts) -- @options) != [] ->
        invalid(
          "unknown start option #{inspect(hd(unknown))}; known: " <>
            Enum.map_join(@options, ", ", &inspect/1)
        )

      true ->
        :ok
    end
  end

  defp config(opts) do
    pool =
      opts
      |> Keyword.get(:worker_config, %{})
      |> Map.new()
      |> Map.merge(
        opts
        |> Keyword.take([:adapter_args, :adapter_env, :startup_timeout])
        |> Map.new()
      )
      |> Map.put(:adapter_module, Keyword.get(opts, :adapter, Snakepit.Adapters.GRPCPython))
      |> Map.put(:name, Keyword.get(opts, :pool_name, :standalone))

    case Config.validate_pool_config(pool) do
      {:ok, config} -> {:ok, config}
      {:error, {_kind, message}} -> invalid(message)
    end
  end

  defp await(pid, timeout) do
    ref = Process.monitor(pid)

    receive do
      {:snakepit_worker_ready, ^pid} ->
        Process.demonitor(ref, [:flush])
        Process.link(pid)
        {:ok, pid}

      {:snakepit_worker_failed, ^pid, error} ->
        Process.demonitor(ref, [:flush])
        {:error, error}

      {:DOWN, ^ref, :process, ^pid, reason} ->
        {:error,
         Error.worker_error("the worker failed to start: #{inspect(reason)}", %{reason: reason})}
    after
      timeout ->
        Process.demonitor(ref, [:flush])
        stop_quietly(pid)
        {:error, Error.timeout_error("the worker did not start within #{timeout} ms")}
    end
  end

  defp stop_quietly(pid) do
    GenServer.stop(pid, :shutdown)
  catch
    :exit, _ -> :ok
  end

  defp invalid(message), do: {:error, Error.validation_error(message)}
end
