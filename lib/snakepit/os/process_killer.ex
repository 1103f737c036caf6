defmodule Snakepit.ProcessKiller do
  @moduledoc """
  Signals and inspects OS processes without shelling out: signals go
  through the native core, process facts come from `/proc`.

  Every function refuses targets that could hit something other than a
  worker: pids and groups below 2, negative numbers, and the VM's own pid
  or process group give `{:error, :invalid_target}` and send nothing.
  """

  alias Snakepit.Native

  @signals %{
    sighup: 1,
    sigint: 2,
    sigquit: 3,
    sigkill: 9,
    sigusr1: 10,
    sigusr2: 12,
    sigterm: 15,
    sigcont: 18,
    sigstop: 19
  }
  # How often liveness is re-checked while waiting for a process that is
  # not our child (no exit notice can be awaited for those), when
  # cleanup_poll_interval_ms is not a positive integer.
  @poll_ms 10

  @type signal ::
          :sigterm
          | :sigkill
          | :sighup
          | :sigint
          | :sigquit
          | :sigusr1
          | :sigusr2
          | :sigcont
          | :sigstop

  @doc "Sends `signal` to one process."
  @spec kill_process(integer(), signal()) :: :ok | {:error, term()}
  def kill_process(os_pid, signal \\ :sigterm) do
    with {:ok, pid} <- target(os_pid), {:ok, sig} <- signal_number(signal) do
      Native.signal_process(pid, sig) |> normalize()
    end
  end

  @doc "Sends `signal` to every process of the group `pgid`."
  @spec kill_process_group(integer(), signal()) :: :ok | {:error, term()}
  def kill_process_group(pgid, signal \\ :sigterm) do
    with {:ok, pgid} <- target(pgid), {:ok, sig} <- signal_number(signal) do
      Native.signal_group(pgid, sig) |> normalize()
    end
  end

  @doc "SIGTERM, wait up to `timeout_ms` for the process to go, then SIGKILL."
  @spec kill_with_escalation(integer(), non_neg_integer()) :: :ok | {:error, term()}
  def kill_with_escalation(os_pid, timeout_ms \\ 2_000) do
    escalate(os_pid, timeout_ms, &kill_process/2, fn -> process_alive?(os_pid) end)
  end

  @doc "SIGTERM to the group, wait up to `timeout_ms` for all of it to go, then SIGKILL."
  @spec kill_process_group_with_escalation(integer(), non_neg_integer()) :: :ok | {:error, term()}
  def kill_process_group_with_escalation(pgid, timeout_ms \\ 2_000) do
    escalate(pgid, timeout_ms, &kill_process_group/2, fn -> group_alive?(pgid) end)
  end

  defp escalate(target, timeout_ms, send_signal, alive?) do
    case send_signal.(target, :sigterm) do
      {:error, :not_found} ->
        :ok

      {:error, _} = error ->
        error

      :ok ->
        if wait_until_gone(alive?, timeout_ms) do
          :ok
        else
          send_signal.(target, :sigkill)
          if wait_until_gone(alive?, 1_000), do: :ok, else: {:error, :still_alive}
        end
    end
  end

  @doc false
  # Polls `alive?` until it turns false or `timeout_ms` passes.
  def wait_until_gone(alive?, timeout_ms) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    poll(alive?, deadline)
  end

  defp poll(alive?, deadline) do
    cond do
      not alive?.() -> true
      System.monotonic_time(:millisecond) >= deadline -> false
      true -> receive(after: (poll_ms() -> poll(alive?, deadline)))
    end
  end

  defp poll_ms do
    case Snakepit.Defaults.cleanup_poll_interval_ms() do
      ms when is_integer(ms) and ms > 0 -> ms
      _ -> @poll_ms
    end
  end

  @doc "True while the process exists and is not a zombie."
  @spec process_alive?(integer()) :: boolean()
  def process_alive?(os_pid) when is_integer(os_pid) and os_pid > 0,
    do: Native.process_alive(os_pid)

  def process_alive?(_), do: false

  @doc false
  def group_alive?(pgid) do
    Enum.any?(list_pids(), fn pid ->
      match?({:ok, ^pgid}, get_process_group_id(pid)) and process_alive?(pid)
    end)
  end

  @doc "The process group of `os_pid`."
  @spec get_process_group_id(integer()) :: {:ok, integer()} | {:error, term()}
  def get_process_group_id(os_pid) when is_integer(os_pid) and os_pid > 0 do
    Native.process_group_of(os_pid) |> normalize()
  end

  def get_process_group_id(_), do: {:error, :invalid_target}

  @doc "The command line of `os_pid`, arguments separated by spaces."
  @spec get_process_command(integer()) :: {:ok, String.t()} | {:error, term()}
  def get_process_command(os_pid) when is_integer(os_pid) and os_pid > 0 do
    case File.read("/proc/#{os_pid}/cmdline") do
      {:ok, ""} -> {:error, :not_found}
      {:ok, raw} -> {:ok, raw |> String.trim_trailing(<<0>>) |> String.replace(<<0>>, " ")}
      {:error, _} -> {:error, :not_found}
    end
  end

  def get_process_command(_), do: {:error, :invalid_target}

  @doc "OS pids of every running process whose executable or command is Python."
  @spec find_python_processes() :: [integer()]
  def find_python_processes do
    for pid <- list_pids(),
        {:ok, cmd} <- [get_process_command(pid)],
        [exe | _] = String.split(cmd, " ", parts: 2),
        Path.basename(exe) =~ ~r/^python[0-9.]*$/,
        do: pid
  end

  @doc """
  Kills every process `find_by_run_id/2` finds (the run id and instance
  name on its command line, the instance token in its environment), with
  its process group:
  SIGTERM, then SIGKILL after `opts[:timeout_ms]` (default 2000).
  Returns `{:ok, pids_found}`.
  """
  @spec kill_by_run_id(String.t(), keyword()) :: {:ok, [integer()]} | {:error, term()}
  def kill_by_run_id(run_id, opts \\ []) do
    if Snakepit.RunID.valid?(run_id) do
      pids = find_by_run_id(run_id, opts)

      Snakepit.RuntimeCleanup.run(Enum.map(pids, &%{process_pid: &1, pgid: &1}),
        timeout_ms: Keyword.get(opts, :timeout_ms, 2_000)
      )

      {:ok, pids}
    else
      {:error, :invalid_run_id}
    end
  end

  @doc """
  OS pids whose command line carries the run id and, when given, the
  instance name (`--instance-name`), and whose environment carries the
  instance token (`SNAKEPIT_INSTANCE_TOKEN`: a token is kept off command
  lines, which every user can read; `/proc/PID/environ` is the owner's).
  """
  @spec find_by_run_id(String.t(), keyword()) :: [integer()]
  def find_by_run_id(run_id, opts \\ []) do
    wanted =
      [{"--snakepit-run-id", run_id}, {"--instance-name", opts[:instance_name]}]
      |> Enum.reject(fn {_, v} -> is_nil(v) end)

    for pid <- list_pids(),
        pid != own_pid(),
        {:ok, cmd} <- [get_process_command(pid)],
        args = String.split(cmd, " "),
        Enum.all?(wanted, fn {flag, value} -> flag_value(args, flag) == value end),
        token_matches?(pid, opts[:instance_token]),
        do: pid
  end

  @token_var "SNAKEPIT_INSTANCE_TOKEN"

  defp token_matches?(_pid, nil), do: true

  defp token_matches?(pid, token) do
    case File.read("/proc/#{pid}/environ") do
      {:ok, environ} -> "#{@token_var}=#{token}" in String.split(environ, <<0>>)
      {:error, _} -> false
    end
  end

  defp flag_value([flag, value | _], flag), do: value
  defp flag_value([_ | rest], flag), do: flag_value(rest, flag)
  defp flag_value([], _flag), do: nil

  @doc false
  def list_pids do
    case File.ls("/proc") do
      {:ok, entries} ->
        for e <- entries, match?({_, ""}, Integer.parse(e)), do: String.to_integer(e)

      {:error, _} ->
        []
    end
  end

  @doc "Process groups are supported on this platform (Linux: yes)."
  @spec process_group_supported?() :: boolean()
  def process_group_supported?, do: match?({:unix, _}, :os.type())

  @doc "The path of the `setsid` executable, or `{:error, :not_found}`. Snakepit itself does not need it: the native core calls setsid(2)."
  @spec setsid_executable() :: {:ok, String.t()} | {:error, :not_found}
  def setsid_executable do
    case System.find_executable("setsid") do
      nil -> {:error, :not_found}
      path -> {:ok, path}
    end
  end

  @doc "Like `setsid_executable/0`, raising when there is none."
  @spec setsid_executable!() :: String.t()
  def setsid_executable! do
    case setsid_executable() do
      {:ok, path} -> path
      {:error, :not_found} -> raise "setsid executable not found on PATH"
    end
  end

  defp own_pid, do: String.to_integer(System.pid())

  defp target(pid) when is_integer(pid) and pid > 1 do
    if pid == own_pid(), do: {:error, :invalid_target}, else: {:ok, pid}
  end

  defp target(_), do: {:error, :invalid_target}

  defp signal_number(signal) when is_atom(signal) do
    case Map.fetch(@signals, signal) do
      {:ok, n} -> {:ok, n}
      :error -> {:error, {:unknown_signal, signal}}
    end
  end

  defp signal_number(n) when is_integer(n) and n > 0 and n < 65, do: {:ok, n}
  defp signal_number(other), do: {:error, {:unknown_signal, other}}

  # The native core's {kind, message} errors, in this module's documented
  # shapes.
  defp normalize({:error, {:invalid_argument, _}}), do: {:error, :invalid_target}
  defp normalize({:error, {:esrch, _}}), do: {:error, :not_found}

  defp normalize({:error, {kind, _}}) when kind in [:eperm, :eacces],
    do: {:error, :permission_denied}

  defp normalize({:error, {kind, _}}), do: {:error, kind}
  defp normalize(other), do: other
end
