defmodule Snakepit.Test.ExternalBeam do
  @moduledoc """
  Runs Snakepit in a separate BEAM (a real OS process we can `kill -9`),
  with a pool started from `env`, and reports its workers' OS pids.
  """

  @doc """
  Starts the VM and waits until its pool is ready. Returns
  `%{port: port, os_pid: beam_os_pid, workers: [os_pid]}`.
  """
  def start!(env, timeout \\ 60_000) do
    elixir = System.find_executable("elixir") || raise "elixir not on PATH"
    ebin = :code.lib_dir(:snakepit) |> Path.join("ebin")

    script = """
    for {k, v} <- #{inspect(env)}, do: Application.put_env(:snakepit, k, v)
    Application.put_env(:snakepit, :pooling_enabled, true)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 30_000)
    pids = Registry.select(Snakepit.Pool.Registry, [{{:_, :_, :"$1"}, [], [:"$1"]}]) |> Enum.map(& &1.os_pid)
    IO.puts("WORKERS " <> Enum.join(pids, ","))
    Process.sleep(:infinity)
    """

    port =
      Port.open({:spawn_executable, elixir}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        {:line, 65_536},
        {:cd, File.cwd!()},
        {:env, [{~c"MIX_ENV", ~c"test"}]},
        {:args, ["-pa", ebin, "-e", script]}
      ])

    {:os_pid, os_pid} = Port.info(port, :os_pid)
    workers = await_workers(port, timeout, [])
    %{port: port, os_pid: os_pid, workers: workers}
  end

  defp await_workers(port, timeout, output) do
    receive do
      {^port, {:data, {:eol, "WORKERS " <> pids}}} ->
        pids |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)

      {^port, {:data, {_, line}}} ->
        await_workers(port, timeout, [line | output])

      {^port, {:exit_status, status}} ->
        raise "external BEAM exited with #{status}:\n" <> Enum.join(Enum.reverse(output), "\n")
    after
      timeout ->
        raise "external BEAM did not start its pool:\n" <> Enum.join(Enum.reverse(output), "\n")
    end
  end
end
