defmodule Snakepit.Defaults do
  @moduledoc """
  A getter for every global setting.

  The settings, their types, defaults and documentation are one table,
  `Snakepit.Config.Settings`; this module generates a getter from each of
  its entries. Each function returns the value of `config :snakepit, key: ...` when it is
  set and the built-in default otherwise, so an operator can override any of
  them without touching code, and Snakepit behaves the same as before when
  nothing is configured.

      # config/runtime.exs
      config :snakepit,
        timeout_profile: :production,
        pool_queue_timeout: 5_000,
        pool_max_queue_size: 1000,
        heartbeat_ping_interval_ms: 2_000

  ## Timeout profiles

  The three headline budgets come from `config :snakepit, timeout_profile: ...`:

  | profile              | default_timeout | stream_timeout | queue_timeout |
  |----------------------|-----------------|----------------|---------------|
  | `:balanced` (default)| 300_000         | 900_000        | 10_000        |
  | `:production`        | 300_000         | 900_000        | 10_000        |
  | `:production_strict` | 60_000          | 300_000        | 5_000         |
  | `:development`       | 900_000         | 3_600_000      | 60_000        |
  | `:ml_inference`      | 900_000         | 3_600_000      | 60_000        |
  | `:batch`             | 3_600_000       | `:infinity`    | 300_000       |

  The per-key settings that existed before profiles (`pool_request_timeout`,
  `pool_streaming_timeout`, `pool_queue_timeout`, `checkout_timeout`,
  `grpc_command_timeout`) still work and
  take precedence over the profile when set; when not set they derive from
  the profile.

  ## Inner and outer timeouts

  `rpc_timeout/1` turns a caller's total budget into the budget of the call
  to Python by reserving `worker_call_margin_ms/0` and
  `pool_reply_margin_ms/0`, so the inner timeout always fires first and the
  caller gets a structured `{:error, %Snakepit.Error{category: :timeout}}`
  instead of an exit.

  ## Upstream names

  Upstream's keys for a setting this implementation has set it (the
  current key wins when both are set):

  | upstream key | sets |
  |---|---|
  | `default_command_timeout` | `pool_request_timeout/0` |
  | `pool_startup_timeout`, `worker_init_timeout` | `grpc_server_ready_timeout/0` |
  | `health_check_interval`, `worker_health_check_interval`, `grpc_worker_health_check_interval` | `lifecycle_health_check_interval/0` |
  | `worker_shutdown_grace_period` | `graceful_shutdown_timeout_ms/0` |
  | `cleanup_retry_interval` | `cleanup_poll_interval_ms/0` |
  | `grpc_internal_host` | `tcp_host/0` |
  | `session_config: %{ttl: ..., cleanup_interval: ...}` | `session_default_ttl/0`, `session_cleanup_interval/0` |

  The getters listed by `inert/0` return settings nothing here reads;
  `Snakepit.Config.Compat` warns at start when one is set and names what
  does that job. `docs/compatibility.md` has both lists.
  """

  alias Snakepit.Config.Settings

  @profiles %{
    balanced: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production: %{default_timeout: 300_000, stream_timeout: 900_000, queue_timeout: 10_000},
    production_strict: %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000},
    development: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    ml_inference: %{default_timeout: 900_000, stream_timeout: 3_600_000, queue_timeout: 60_000},
    batch: %{default_timeout: 3_600_000, stream_timeout: :infinity, queue_timeout: 300_000}
  }

  @derived_aliases Settings.derived_aliases()

  # Structured settings are checked further by the module that reads them,
  # which also copes with a value set at run time (after the start's check),
  # so their getters promise no more than a term.
  @structured for {name, _, _, _, _} <- Settings.structured(), do: name

  for {name, keys, default, spec, doc} <-
        Settings.plain() ++ Settings.upstream() ++ Settings.structured(),
      default != :computed do
    {spec, of_type} =
      if name in @structured,
        do: {quote(do: term()), ", of type `#{Macro.to_string(spec)}`"},
        else: {spec, ""}

    @doc """
    #{if doc == :inert, do: Settings.inert_doc(), else: doc}

    Config key: `#{Enum.map_join(keys, "` (or `", &inspect/1)}#{if length(keys) > 1, do: "`)", else: "`"}#{of_type}; default: `#{inspect(default)}`.
    """
    @spec unquote(name)() :: unquote(spec)
    def unquote(name)(), do: get(unquote(keys), unquote(Macro.escape(default)))
  end

  for {name, source, how, doc} <- Settings.derived() do
    keys = [name | Map.get(@derived_aliases, name, [])]

    {derivation, body} =
      case how do
        :identity -> {"`#{source}/0`", quote(do: unquote(source)())}
        :rpc -> {"`rpc_timeout(#{source}())`", quote(do: rpc_timeout(unquote(source)()))}
      end

    @doc """
    #{doc}

    Config key: `#{Enum.map_join(keys, "` (or `", &inspect/1)}#{if length(keys) > 1, do: "`)", else: "`"}; when not set, #{derivation} of the active
    timeout profile.
    """
    @spec unquote(name)() :: timeout()
    def unquote(name)() do
      case get(unquote(keys), :unset) do
        :unset -> unquote(body)
        value -> value
      end
    end
  end

  @doc """
  Default timeout (ms) of `Snakepit.GRPC.Client.execute/3` (a call on a
  connection from `Snakepit.GRPCWorker.get_channel/1`): the
  `grpc_client_execute_timeout` key, else `grpc_command_timeout/0`.
  """
  @spec grpc_client_execute_timeout() :: timeout()
  def grpc_client_execute_timeout do
    case Application.fetch_env(:snakepit, :grpc_client_execute_timeout) do
      {:ok, value} -> value
      :error -> grpc_command_timeout()
    end
  end

  @doc """
  The getters documented upstream whose setting nothing here reads (see
  `Snakepit.Config.Compat`).
  """
  @spec inert() :: [atom()]
  def inert, do: for({name, _, _, _, :inert} <- Settings.upstream(), do: name)

  @doc """
  Upstream's command timeout: the `default_command_timeout` key, else the
  call-to-Python share (`rpc_timeout/1`) of `pool_request_timeout/0`. The
  same key sets `pool_request_timeout/0` when that one is not set.
  """
  @spec default_command_timeout() :: timeout()
  def default_command_timeout,
    do: get([:default_command_timeout], nil) || rpc_timeout(pool_request_timeout())

  @doc """
  Default timeout (ms) of `Snakepit.GRPCWorker.execute/3-5` and
  `execute_in_session/4-6`, direct calls to one worker: the
  `grpc_worker_execute_timeout` key, else `rpc_timeout(default_timeout())`.
  """
  @spec grpc_worker_execute_timeout() :: timeout()
  def grpc_worker_execute_timeout,
    do: get([:grpc_worker_execute_timeout], nil) || rpc_timeout(default_timeout())

  @doc """
  Default timeout (ms) of `Snakepit.GRPCWorker.execute_stream/4-6`: the
  `grpc_worker_stream_timeout` key, else `stream_timeout/0`.
  """
  @spec grpc_worker_stream_timeout() :: timeout()
  def grpc_worker_stream_timeout,
    do: get([:grpc_worker_stream_timeout], nil) || stream_timeout()

  @doc """
  How long (ms) a worker may take to start: `grpc_server_ready_timeout/0`,
  which the upstream keys `pool_startup_timeout` and `worker_init_timeout`
  also set.
  """
  @spec pool_startup_timeout() :: timeout()
  def pool_startup_timeout, do: grpc_server_ready_timeout()

  @doc """
  Interval (ms) of the periodic worker health check:
  `lifecycle_health_check_interval/0`, which the upstream keys
  `grpc_worker_health_check_interval`, `health_check_interval` and
  `worker_health_check_interval` also set.
  """
  @spec grpc_worker_health_check_interval() :: pos_integer()
  def grpc_worker_health_check_interval, do: lifecycle_health_check_interval()

  @doc """
  Host of listeners that stay on this machine: `tcp_host/0`, which the
  upstream key `grpc_internal_host` also sets.
  """
  @spec grpc_internal_host() :: String.t()
  def grpc_internal_host, do: tcp_host()

  @doc """
  Workers started at once by a process-profile pool that sets no
  `startup_batch_size`: the `pool_startup_batch_size` key, else
  `config_default_batch_size/0`.
  """
  @spec pool_startup_batch_size() :: pos_integer()
  def pool_startup_batch_size,
    do: get([:pool_startup_batch_size], nil) || config_default_batch_size()

  @doc """
  Longest wait (ms) between startup batches of a process-profile pool that
  sets no `startup_batch_delay_ms`: the `pool_startup_batch_delay_ms` key,
  else `config_default_batch_delay/0`.
  """
  @spec pool_startup_batch_delay_ms() :: non_neg_integer()
  def pool_startup_batch_delay_ms,
    do: get([:pool_startup_batch_delay_ms], nil) || config_default_batch_delay()

  # A key is a top-level key or {key, inner}, an entry of an upstream map
  # setting (`session_config: %{ttl: ...}`).
  defp get([{key, inner} | rest], default) do
    case Application.fetch_env(:snakepit, key) do
      {:ok, map} when is_map(map) and is_map_key(map, inner) -> Map.fetch!(map, inner)
      {:ok, [{_, _} | _] = kw} -> Keyword.get_lazy(kw, inner, fn -> get(rest, default) end)
      _ -> get(rest, default)
    end
  end

  # Erlang's lookup: read on every call (the timeouts and margins of each
  # execute/3), and Elixir's wrapper adds only a check of the key's type.
  defp get([key | rest], default) do
    case :application.get_env(:snakepit, key) do
      {:ok, value} -> value
      :undefined -> get(rest, default)
    end
  end

  defp get([], default), do: default

  # -- profiles -----------------------------------------------------------------

  @doc """
  All timeout profiles, each with `default_timeout`, `stream_timeout` and
  `queue_timeout`.

      iex> Snakepit.Defaults.timeout_profiles().production_strict
      %{default_timeout: 60_000, stream_timeout: 300_000, queue_timeout: 5_000}
  """
  @spec timeout_profiles() :: %{required(atom()) => %{required(atom()) => timeout()}}
  def timeout_profiles, do: @profiles

  @doc """
  The active profile (`config :snakepit, timeout_profile: ...`); `:balanced`
  when none or an unknown one is configured.
  """
  @spec timeout_profile() :: atom()
  def timeout_profile do
    profile = :application.get_env(:snakepit, :timeout_profile, :balanced)
    if is_map_key(@profiles, profile), do: profile, else: :balanced
  end

  @doc """
  Total budget (ms) of a regular call under the active profile. The
  `default_timeout` key, when set, wins.
  """
  @spec default_timeout() :: timeout()
  def default_timeout, do: profiled(:default_timeout)

  @doc "Total budget (ms) of a streaming call under the active profile (`stream_timeout` key wins)."
  @spec stream_timeout() :: timeout()
  def stream_timeout, do: profiled(:stream_timeout)

  @doc "Queue budget (ms) under the active profile (`queue_timeout` key wins)."
  @spec queue_timeout() :: timeout()
  def queue_timeout, do: profiled(:queue_timeout)

  defp profiled(key) do
    case :application.get_env(:snakepit, key) do
      {:ok, value} -> value
      :undefined -> @profiles |> Map.fetch!(timeout_profile()) |> Map.fetch!(key)
    end
  end

  @doc """
  The budget of the inner call to Python out of a `total_timeout`:
  `total_timeout - worker_call_margin_ms() - pool_reply_margin_ms()`.

  Budgets too small to hold both margins (under ten times their sum) keep
  90% of the total instead, so the result stays positive and grows with the
  total.

      iex> Snakepit.Defaults.rpc_timeout(60_000)
      58_800
      iex> Snakepit.Defaults.rpc_timeout(:infinity)
      :infinity
      iex> Snakepit.Defaults.rpc_timeout(1_000)
      900
  """
  @spec rpc_timeout(timeout()) :: timeout()
  def rpc_timeout(:infinity), do: :infinity

  def rpc_timeout(total) when is_integer(total) and total >= 0,
    do: rpc_timeout(total, worker_call_margin_ms() + pool_reply_margin_ms())

  @doc false
  # `rpc_timeout/1` with the sum of the margins given.
  @spec rpc_timeout(non_neg_integer(), non_neg_integer()) :: non_neg_integer()
  def rpc_timeout(total, margins), do: max(total - min(margins, div(total, 10)), 0)

  # -- others -------------------------------------------------------------------

  @doc """
  Pool size when none is configured: the `pool_size` key, else two workers
  per online scheduler.
  """
  @spec default_pool_size() :: pos_integer()
  def default_pool_size,
    do: Application.get_env(:snakepit, :pool_size, System.schedulers_online() * 2)

  @doc "The Python adapter class a worker loads when none is configured."
  @spec default_python_adapter() :: String.t()
  def default_python_adapter, do: "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
end
