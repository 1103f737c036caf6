defmodule Snakepit.HealthMonitor.State do
  @moduledoc """
  Crash bookkeeping for `Snakepit.HealthMonitor` as pure functions.

  Times are monotonic milliseconds passed in by the caller. A crash counts
  towards health while `now - crash_time < crash_window_ms`. The pool is
  healthy while fewer than `max_crashes` crashes are in the window; a
  worker is healthy while fewer than `max_crashes` of its own crashes are.
  Per-worker lifetime counts are kept; the last 10 crash reasons are
  kept per worker, newest first.
  """

  import Snakepit.Resilience.Options, only: [pos_int!: 3]

  @max_reasons 10

  @type worker_stats :: %{
          crash_count: non_neg_integer(),
          last_crash_time: integer() | nil,
          crash_reasons: [term()]
        }

  @type t :: %__MODULE__{
          pool: atom(),
          workers: %{optional(String.t()) => worker_stats()},
          crash_window_ms: pos_integer(),
          max_crashes: pos_integer(),
          total_crashes: non_neg_integer(),
          check_interval_ms: pos_integer(),
          check_timer: reference() | nil,
          recent: [{integer(), String.t()}]
        }

  @enforce_keys [:pool]
  defstruct pool: nil,
            workers: %{},
            crash_window_ms: 60_000,
            max_crashes: 10,
            total_crashes: 0,
            check_interval_ms: 30_000,
            check_timer: nil,
            recent: []

  @doc """
  Builds an empty monitor state from `:pool` (required atom),
  `:crash_window_ms`, `:max_crashes` and `:check_interval_ms` (positive
  integers). Raises `ArgumentError` naming the option on bad values.
  """
  @spec new(keyword()) :: t()
  def new(opts) do
    pool =
      case Keyword.fetch(opts, :pool) do
        {:ok, pool} when is_atom(pool) and not is_nil(pool) ->
          pool

        {:ok, other} ->
          raise ArgumentError, "invalid :pool option: expected an atom, got: #{inspect(other)}"

        :error ->
          raise ArgumentError, "the :pool option is required"
      end

    %__MODULE__{
      pool: pool,
      crash_window_ms:
        pos_int!(opts, :crash_window_ms, Snakepit.Defaults.health_monitor_crash_window_ms()),
      max_crashes: pos_int!(opts, :max_crashes, Snakepit.Defaults.health_monitor_max_crashes()),
      check_interval_ms:
        pos_int!(opts, :check_interval_ms, Snakepit.Defaults.health_monitor_check_interval())
    }
  end

  @doc "Records a crash of `worker_id` at `now`; `info[:reason]` is kept (default `:unknown`)."
  @spec record_crash(t(), String.t(), map(), integer()) :: t()
  def record_crash(%__MODULE__{} = s, worker_id, info, now)
      when is_binary(worker_id) and is_map(info) do
    reason = Map.get(info, :reason, Map.get(info, "reason", :unknown))

    worker =
      s.workers
      |> Map.get(worker_id, %{crash_count: 0, last_crash_time: nil, crash_reasons: []})
      |> then(fn w ->
        %{
          w
          | crash_count: w.crash_count + 1,
            last_crash_time: now,
            crash_reasons: Enum.take([reason | w.crash_reasons], @max_reasons)
        }
      end)

    s = prune(s, now)

    %{
      s
      | workers: Map.put(s.workers, worker_id, worker),
        total_crashes: s.total_crashes + 1,
        recent: [{now, worker_id} | s.recent]
    }
  end

  def record_crash(%__MODULE__{}, worker_id, info, _now) do
    raise ArgumentError,
          "record_crash expects a string worker id and a map, got: #{inspect(worker_id)}, #{inspect(info)}"
  end

  @doc "Drops crashes that have left the window."
  @spec prune(t(), integer()) :: t()
  def prune(%__MODULE__{} = s, now) do
    %{s | recent: Enum.take_while(s.recent, fn {time, _id} -> in_window?(s, time, now) end)}
  end

  @doc "Number of crashes inside the window at `now`."
  @spec crashes_in_window(t(), integer()) :: non_neg_integer()
  def crashes_in_window(%__MODULE__{} = s, now) do
    Enum.count(s.recent, fn {time, _id} -> in_window?(s, time, now) end)
  end

  @doc "Whether the pool is healthy at `now`."
  @spec healthy?(t(), integer()) :: boolean()
  def healthy?(%__MODULE__{} = s, now), do: crashes_in_window(s, now) < s.max_crashes

  @doc "Health of one worker at `now`; unknown workers are healthy with no crashes."
  @spec worker_health(t(), String.t(), integer()) :: map()
  def worker_health(%__MODULE__{} = s, worker_id, now) do
    stats =
      Map.get(s.workers, worker_id, %{crash_count: 0, last_crash_time: nil, crash_reasons: []})

    recent =
      Enum.count(s.recent, fn {time, id} -> id == worker_id and in_window?(s, time, now) end)

    Map.merge(stats, %{
      worker_id: worker_id,
      recent_crashes: recent,
      healthy: recent < s.max_crashes,
      # upstream Snakepit's name for the same
      is_healthy: recent < s.max_crashes
    })
  end

  @doc "Statistics for the whole pool at `now`."
  @spec stats(t(), integer()) :: map()
  def stats(%__MODULE__{} = s, now) do
    in_window = crashes_in_window(s, now)

    %{
      pool: s.pool,
      healthy: in_window < s.max_crashes,
      is_healthy: in_window < s.max_crashes,
      total_crashes: s.total_crashes,
      crashes_in_window: in_window,
      max_crashes: s.max_crashes,
      crash_window_ms: s.crash_window_ms,
      check_interval_ms: s.check_interval_ms,
      workers_with_crashes: map_size(s.workers),
      workers: s.workers
    }
  end

  defp in_window?(s, time, now), do: now - time < s.crash_window_ms
end
