defmodule Snakepit.OS.Command do
  @moduledoc """
  Runs a short external command (a hardware or Python probe) through the
  native core, like every OS process Snakepit starts: own process group,
  killed with the VM, and killed — group and all — when it overruns its
  time limit. Output of stdout and stderr is collected line by line.
  """

  alias Snakepit.Native

  @doc """
  Runs `program` (looked up on `PATH` when it has no `/`) with `args`.
  Returns `{:ok, output}` on exit status 0, `{:error, {:exit_status, code,
  output}}` otherwise, `{:error, :not_found}` when there is no such program
  and `{:error, :timeout}` after `timeout_ms`.

  Options: `:timeout_ms` (default 5000), `:env` (extra `{name, value}`
  pairs), `:with_secret` (default false: give the command this VM's
  transport secret in its environment, as Snakepit's own workers get it,
  for Snakepit's own Python tools that talk to the bridge).
  """
  @spec run(String.t(), [String.t()], keyword()) :: {:ok, String.t()} | {:error, term()}
  def run(program, args, opts \\ []) do
    timeout = Keyword.get(opts, :timeout_ms, 5_000)
    env = System.get_env() |> Map.merge(Map.new(Keyword.get(opts, :env, []))) |> Enum.to_list()

    with {:ok, path} <- find(program),
         {:ok, {os_pid, handle}} <- start(path, args, env, Keyword.get(opts, :with_secret, false)) do
      deadline = System.monotonic_time(:millisecond) + timeout

      try do
        collect(os_pid, deadline, [])
      after
        Native.release_process(handle)
      end
    end
  end

  defp find(program) do
    path = if String.contains?(program, "/"), do: program, else: System.find_executable(program)
    if path && File.regular?(path), do: {:ok, path}, else: {:error, :not_found}
  end

  defp start(path, args, env, with_secret) do
    case Native.spawn_process(path, [path | args], env, nil, self(), %{
           orphan_protection: true,
           with_secret: with_secret
         }) do
      {:ok, _} = ok -> ok
      {:error, reason} -> {:error, {:spawn_failed, reason}}
    end
  end

  defp collect(os_pid, deadline, lines) do
    wait = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:snakepit_process, ^os_pid, {stream, line}} when stream in [:stdout, :stderr] ->
        collect(os_pid, deadline, [line | lines])

      {:snakepit_process, ^os_pid, {:exit, status}} ->
        output = lines |> Enum.reverse() |> Enum.map_join(&(&1 <> "\n"))

        case status do
          {:exited, 0} -> {:ok, output}
          {:exited, code} -> {:error, {:exit_status, code, output}}
          other -> {:error, {:exit_status, other, output}}
        end
    after
      wait ->
        Snakepit.ProcessKiller.kill_process_group(os_pid, :sigkill)
        flush(os_pid)
        {:error, :timeout}
    end
  end

  # Drops what the killed command still sends, up to its exit notice.
  defp flush(os_pid) do
    receive do
      {:snakepit_process, ^os_pid, {:exit, _}} -> :ok
      {:snakepit_process, ^os_pid, _} -> flush(os_pid)
    after
      1_000 -> :ok
    end
  end
end
