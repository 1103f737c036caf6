defmodule Snakepit.Test.PeerCluster do
  @moduledoc """
  Peer nodes on this machine (`:peer`), each running Snakepit with a real
  pool of Python workers, for the cluster tests, example and bench.
  """

  @doc "Makes this VM a distributed node (starting epmd when needed)."
  def ensure_distributed! do
    unless Node.alive?() do
      System.cmd("epmd", ["-daemon"])
      {:ok, _} = Node.start(:"snakepit_main_#{System.unique_integer([:positive])}", :shortnames)
    end

    :ok
  end

  @doc """
  Starts a peer running Snakepit with `env` (config :snakepit keys; the
  cluster is on) and waits until its pool is up. Returns `{peer, node}`.
  """
  def start_peer!(name, env \\ []) do
    ensure_distributed!()
    args = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{
        name: :"#{name}_#{System.unique_integer([:positive])}",
        args: args,
        wait_boot: 30_000
      })

    :ok = :erpc.call(node, Application, :load, [:snakepit])
    env = Keyword.merge([pooling_enabled: true, pool_size: 1, cluster: true], env)

    for {key, value} <- env,
        do: :ok = :erpc.call(node, Application, :put_env, [:snakepit, key, value])

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:snakepit], 60_000)
    :ok = :erpc.call(node, Snakepit.Pool, :await_init_complete, [Snakepit.Pool, 60_000], 70_000)
    {peer, node}
  end

  @doc "Stops a peer (its Snakepit stops its workers first)."
  def stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end
end
