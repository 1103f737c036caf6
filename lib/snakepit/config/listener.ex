defmodule Snakepit.Config.Listener do
  @moduledoc """
  Where the Elixir bridge (the gRPC server Python workers call back into,
  `Snakepit.GRPC.BridgeServer`) listens: `config :snakepit, grpc_listener:`.

      # default: beside the workers (a Unix socket in the private runtime
      # directory, or tcp_host with an ephemeral port under worker_transport: :tcp)
      config :snakepit, grpc_listener: [mode: :internal]

      # a fixed TCP address, whatever the workers' transport
      config :snakepit, grpc_listener: [mode: :external, host: "127.0.0.1", port: 50_051]

  The legacy `grpc_port` / `grpc_host` keys mean `:external`. A host must
  be a loopback address unless `allow_non_loopback_bind: true`
  (`Snakepit.Config.tcp_host/2`). Upstream's `:external_pool` mode (a range
  of ports) is refused: one VM has one bridge, which serves every worker.
  """

  alias Snakepit.{Config, Defaults}

  @type t :: %{
          mode: :internal | :external,
          host: String.t() | nil,
          port: non_neg_integer()
        }

  @doc """
  The validated listener: `{:ok, %{mode:, host:, port:}}` or
  `{:error, {:invalid_grpc_listener, message}}`.
  """
  @spec config() :: {:ok, t()} | {:error, {:invalid_grpc_listener, String.t()}}
  def config do
    case Snakepit.Defaults.grpc_listener() do
      nil -> legacy()
      listener when is_list(listener) or is_map(listener) -> validate(Map.new(listener))
      other -> error("grpc_listener must be a keyword list, got: #{inspect(other)}")
    end
  end

  @doc "Like `config/0`, raising `ArgumentError` on a bad configuration."
  @spec config!() :: t()
  def config! do
    case config() do
      {:ok, listener} -> listener
      {:error, {_, message}} -> raise ArgumentError, message
    end
  end

  @doc """
  The addresses the bridge tries to listen on, in order: `previous` (where
  a restarted bridge listened before, so running workers reconnect) first
  when it matches the configuration, then the configured one.
  """
  @spec addresses(t(), String.t(), String.t() | nil) :: [String.t()]
  def addresses(%{mode: :internal}, unix_path, previous) do
    case Defaults.worker_transport() do
      :tcp -> with_previous(Config.tcp_listen_address(Defaults.tcp_host()), previous)
      _unix -> ["unix:" <> unix_path]
    end
  end

  def addresses(%{mode: :external, host: host, port: port}, _unix_path, _previous),
    do: [address(host, port)]

  defp with_previous(fresh, nil), do: [fresh]

  defp with_previous(fresh, previous) do
    host = String.trim_trailing(fresh, ":0")
    if String.starts_with?(previous, host <> ":"), do: [previous, fresh], else: [fresh]
  end

  defp address(host, port), do: if(host =~ ":", do: "[#{host}]:#{port}", else: "#{host}:#{port}")

  defp legacy do
    # Only a grpc_port that is set counts: its getter has a default.
    port =
      case Snakepit.Config.Settings.fetch(:grpc_port) do
        {:ok, port} -> port
        :error -> nil
      end

    host = Snakepit.Defaults.grpc_host()

    if port == nil and host == nil,
      do: validate(%{mode: :internal}),
      else: validate(%{mode: :external, host: host || "127.0.0.1", port: port || 0})
  end

  defp validate(%{mode: :internal} = l) do
    with :ok <- no_keys_but(l, [:mode]), do: {:ok, %{mode: :internal, host: nil, port: 0}}
  end

  defp validate(%{mode: :external} = l) do
    host = Map.get(l, :host, Defaults.tcp_host())
    port = Map.get(l, :port, 0)

    with :ok <- no_keys_but(l, [:mode, :host, :port]),
         :ok <- check_port(port),
         {:ok, host} <- check_host(host) do
      {:ok, %{mode: :external, host: host, port: port}}
    end
  end

  defp validate(%{mode: :external_pool}),
    do:
      error(
        "grpc_listener mode :external_pool is not supported: one VM has one bridge, which " <>
          "serves every worker; use mode: :external with one port, or :internal"
      )

  defp validate(%{mode: mode}),
    do: error("grpc_listener mode must be :internal or :external, got: #{inspect(mode)}")

  defp validate(_), do: error("grpc_listener needs a mode (:internal or :external)")

  defp no_keys_but(listener, allowed) do
    case Map.keys(listener) -- allowed do
      [] -> :ok
      extra -> error("grpc_listener mode #{inspect(listener.mode)} takes no #{inspect(extra)}")
    end
  end

  defp check_port(port) do
    if is_integer(port) and port in 0..65_535,
      do: :ok,
      else: error("grpc_listener port must be an integer in 0..65535, got: #{inspect(port)}")
  end

  defp check_host(host) do
    case Config.tcp_host(host, Defaults.allow_non_loopback_bind()) do
      {:ok, host} -> {:ok, host}
      {:error, message} -> error("grpc_listener host: " <> message)
    end
  end

  defp error(message), do: {:error, {:invalid_grpc_listener, message}}
end
