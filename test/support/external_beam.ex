defmodule Snakepit.Test.ExternalBeam do
  @moduledoc """
  Runs Snakepit in a separate BEAM, a real OS process a test can `kill -9`.
  """

  @doc """
  Starts a VM whose pool is configured by `env` (keyword of `config
  :snakepit` keys), waits until every worker has started, and runs
  `after_ready` (Elixir source, may print `EXTRA <value>` lines). Returns
  `%{port:, os_pid:, run_id:, workers: [os_pid], extra: [String.t()]}`.
  """
  def start!(env, after_ready \\ "", timeout \\ 60_000) do
    script = """
    for {k, v} <- #{inspect(env)}, do: Application.put_env(:snakepit, k, v)
    Application.put_env(:snakepit, :pooling_enabled, true)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_init_complete(Snakepit.Pool, 30_000)
    #{after_ready}
    IO.puts("RUNID " <> Snakepit.RunID.current())
    pids = Registry.select(Snakepit.Pool.Registry, [{{:_, :_, :"$1"}, [], [:"$1"]}]) |> Enum.map(& &1.os_pid)
    IO.puts("WORKERS " <> Enum.join(pids, ","))
    Process.sleep(:infinity)
    """

    port = open(script, [])
    {:os_pid, os_pid} = Port.info(port, :os_pid)
    result = await_ready(port, timeout, %{extra: [], output: []})
    Map.merge(result, %{port: port, os_pid: os_pid})
  end

  @doc "Runs `script` in a fresh VM to its end; returns `{output, exit_status}`."
  def run(script, os_env \\ [], timeout \\ 60_000) do
    port = open(script, os_env)
    collect(port, timeout, [])
  end

  defp open(script, os_env) do
    elixir = System.find_executable("elixir") || raise "elixir not on PATH"
    ebin = :code.lib_dir(:snakepit) |> Path.join("ebin")

    env = [
      {~c"MIX_ENV", ~c"test"}
      | Enum.map(os_env, fn {k, v} -> {to_charlist(k), to_charlist(v)} end)
    ]

    Port.open({:spawn_executable, elixir}, [
      :binary,
      :exit_status,
      :stderr_to_stdout,
      {:line, 65_536},
      {:cd, File.cwd!()},
      {:env, env},
      {:args, ["-pa", ebin, "-e", script]}
    ])
  end

  defp await_ready(port, timeout, acc) do
    receive do
      {^port, {:data, {:eol, "WORKERS " <> pids}}} ->
        workers = pids |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
        %{workers: workers, run_id: acc[:run_id], extra: Enum.reverse(acc.extra)}

      {^port, {:data, {:eol, "RUNID " <> id}}} ->
        await_ready(port, timeout, Map.put(acc, :run_id, id))

      {^port, {:data, {:eol, "EXTRA " <> value}}} ->
        await_ready(port, timeout, %{acc | extra: [value | acc.extra]})

      {^port, {:data, {_, line}}} ->
        await_ready(port, timeout, %{acc | output: [line | acc.output]})

      {^port, {:exit_status, status}} ->
        raise "external BEAM exited with #{status}:\n" <>
                Enum.join(Enum.reverse(acc.output), "\n")
    after
      timeout ->
        raise "external BEAM did not start its pool:\n" <>
                Enum.join(Enum.reverse(acc.output), "\n")
    end
  end

  defp collect(port, timeout, lines) do
    receive do
      {^port, {:data, {_, line}}} -> collect(port, timeout, [line | lines])
      {^port, {:exit_status, status}} -> {Enum.join(Enum.reverse(lines), "\n"), status}
    after
      timeout -> raise "external BEAM did not finish:\n" <> Enum.join(Enum.reverse(lines), "\n")
    end
  end
end
