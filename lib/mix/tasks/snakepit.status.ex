defmodule Mix.Tasks.Snakepit.Status do
  @shortdoc "Shows Snakepit's pools and workers, and whether they are healthy"
  @moduledoc """
  Prints each configured pool (profile, size, ready/busy/down slots, queue,
  utilization, recent errors, wait and run times) and each worker (id, OS
  pid, resident memory, requests served, uptime, state). See
  `Snakepit.Status`.

      mix snakepit.status                      # starts the app here, waits for its pools
      mix snakepit.status --node app@host      # asks a running node of the app
      mix snakepit.status --node app@host --cookie SECRET

  Without `--node` it starts the host application (and so its pools) and
  waits up to `--timeout` ms (default 30000) for them. With `--node` it
  starts distribution under a temporary name and calls the node.

  Exits 0 when healthy; otherwise prints a one-line reason and exits 1
  (2 when the node cannot be reached).
  """
  use Mix.Task

  @switches [node: :string, cookie: :string, timeout: :integer]

  @impl true
  def run(argv) do
    {opts, _rest} = OptionParser.parse!(argv, strict: @switches)
    timeout = Keyword.get(opts, :timeout, 30_000)

    snapshot =
      case opts[:node] do
        nil -> local(timeout)
        name -> remote(name, opts[:cookie], timeout)
      end

    Mix.shell().info(Snakepit.Status.format(snapshot))
    unless snapshot.healthy, do: fail(1, snapshot.reason)
  end

  defp local(timeout) do
    Mix.Task.run("app.start")

    case Snakepit.Pool.await_ready(Snakepit.Pool, timeout) do
      :ok -> :ok
      {:error, error} -> Mix.shell().error("pools not ready: #{Exception.message(error)}")
    end

    Snakepit.Status.snapshot()
  catch
    :exit, _ -> Snakepit.Status.snapshot()
  end

  defp remote(name, cookie, timeout) do
    node = String.to_atom(name)

    mode =
      if String.contains?(name, ".") and String.contains?(name, "@"),
        do: :longnames,
        else: :shortnames

    me = :"snakepit_status_#{System.unique_integer([:positive])}"

    case Node.start(me, mode) do
      {:ok, _} ->
        :ok

      {:error, reason} ->
        fail(2, "cannot start distribution: #{inspect(reason)} (is epmd running?)")
    end

    if cookie, do: Node.set_cookie(String.to_atom(cookie))

    try do
      :erpc.call(node, Snakepit.Status, :snapshot, [], timeout)
    catch
      :error, {:erpc, reason} -> fail(2, "cannot reach #{name}: #{inspect(reason)}")
      kind, reason -> fail(2, "#{name} could not answer: #{inspect({kind, reason})}")
    end
  end

  defp fail(status, reason) do
    Mix.shell().error(reason)
    exit({:shutdown, status})
  end
end
