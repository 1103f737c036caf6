defmodule Snakepit.Worker.TaintRegistry do
  @moduledoc """
  Workers (and devices) tainted after a crash, with when the taint ends.

  Entries live in the shared `:snakepit_worker_taints` ETS table owned by
  `Snakepit.ETSOwner`, so any process may read them without a message.
  Expired taints read as absent and are removed lazily.
  """

  @table :snakepit_worker_taints

  @type info :: %{
          required(:worker_id) => String.t(),
          required(:tainted_at_ms) => integer(),
          required(:expires_at_ms) => integer(),
          optional(atom()) => term()
        }

  @doc """
  Taints `worker_id`. Options: `:duration_ms` (default
  `Snakepit.Defaults.crash_barrier_taint_duration_ms/0`) and any facts to keep
  (`:reason`, `:exit_status`, `:pool`, `:device`).
  """
  @spec taint_worker(String.t(), keyword()) :: :ok
  def taint_worker(worker_id, opts \\ []) do
    now = now_ms()

    duration =
      Keyword.get_lazy(opts, :duration_ms, &Snakepit.Defaults.crash_barrier_taint_duration_ms/0)

    info =
      opts
      |> Keyword.drop([:duration_ms])
      |> Map.new()
      |> Map.merge(%{
        worker_id: worker_id,
        tainted_at_ms: now,
        expires_at_ms: now + duration,
        restart_notified: false
      })

    :ets.insert(table(), {worker_id, info})
    :ok
  end

  @doc "Is `worker_id` tainted now?"
  @spec worker_tainted?(String.t()) :: boolean()
  def worker_tainted?(worker_id), do: worker_info(worker_id) != nil

  @doc "The taint of `worker_id`, or nil when it has none (or it expired)."
  @spec worker_info(String.t()) :: info() | nil
  def worker_info(worker_id) do
    case :ets.lookup(table(), worker_id) do
      [{_, %{expires_at_ms: until} = info}] ->
        if until > now_ms() do
          info
        else
          :ets.delete_object(table(), {worker_id, info})
          nil
        end

      [] ->
        nil
    end
  end

  @doc """
  Claims the one restart notice of a tainted worker: `{:ok, info}` the
  first time it is called for a taint, `:error` after that, and for a
  worker that is not tainted (or whose taint expired). The crash barrier
  uses it so `[:snakepit, :worker, :restarted]` is emitted once per taint,
  however many processes ask at the same time.
  """
  @spec consume_restart(String.t()) :: {:ok, info()} | :error
  def consume_restart(worker_id) when is_binary(worker_id) do
    case worker_info(worker_id) do
      %{restart_notified: false, tainted_at_ms: at} = info ->
        # Compare-and-swap on this taint's unclaimed entry: of two
        # concurrent callers only one replaces it.
        claimed = Map.put(info, :restart_notified, true)
        head = {worker_id, %{tainted_at_ms: at, restart_notified: false}}

        case :ets.select_replace(table(), [{head, [], [{:const, {worker_id, claimed}}]}]) do
          1 -> {:ok, info}
          0 -> :error
        end

      _claimed_or_none ->
        :error
    end
  end

  def consume_restart(_worker_id), do: :error

  @doc "Lifts the taint of `worker_id`."
  @spec clear_worker(String.t()) :: :ok
  def clear_worker(worker_id) do
    :ets.delete(table(), worker_id)
    :ok
  end

  defp table, do: Snakepit.ETSOwner.ensure_table(@table)
  defp now_ms, do: System.monotonic_time(:millisecond)
end
