defmodule Snakepit.Pool.Server do
  @moduledoc """
  The process behind `Snakepit.Pool`: plumbing only. It receives requests,
  worker and caller events, and hands each to the helper that owns it.

  The layers, each calling only those below it:

    1. this module: messages in, replies out, its own timers, and the
       callers of `await_ready/2` answered after every event;
    2. `Snakepit.Pool.Size` (the pool's size) and `Snakepit.Pool.Stats`
       (what it reports);
    3. `Snakepit.Pool.Slots` (a worker's life: starting, ready, failed,
       down, recycled; it carries out the scheduling state's actions and
       drives restarts);
    4. `Snakepit.Pool.Restart` (a restart's progress) and
       `Snakepit.Pool.Leases` (grants, queued requests, check-ins, callers
       that die, stopping calls);
    5. `Snakepit.Pool.ServerState` (this process's state and its
       accessors), over the pure `Snakepit.Pool.State` (scheduling: with
       `Placement` and `Draining`), `Runtime`, `Admission`, `Scaling`.

  Helpers take the state and return it (with `Snakepit.Pool.State`'s
  actions where a slot came back, for `Slots.perform/3`); none calls this
  module.
  """
  use GenServer

  alias Snakepit.{Config, Defaults, Error, Telemetry}

  alias Snakepit.Pool.{
    Batcher,
    Errors,
    Leases,
    Reloader,
    Restart,
    Runtime,
    Scaling,
    ServerState,
    Size,
    Slots,
    State,
    Stats
  }

  @impl true
  def init(opts) do
    pools =
      case Keyword.fetch(opts, :pools) do
        {:ok, pools} -> Config.normalize_all(pools)
        :error -> Config.get_pool_configs()
      end

    with {:ok, configs} <- pools,
         :ok <- register_names(configs),
         {:ok, batching} <- start_batching(hd(configs).name) do
      state = ServerState.new(configs, batching.table, opts)
      schedule_prune()
      for config <- configs, Config.elastic?(config), do: schedule_scale(config)
      state = Enum.reduce(configs, state, &start_reloader(&2, &1))
      schedule_status()
      {:ok, state, {:continue, :start_workers}}
    else
      {:error, {:name_taken, message}} ->
        {:stop, {:name_taken, message}}

      {:error, reason} ->
        {:stop, {:invalid_config, reason}}
    end
  end

  # Each pool name is served by one pool process, found in Snakepit.Pool.Names.
  defp register_names(configs) do
    Enum.reduce_while(configs, :ok, fn config, :ok ->
      case Snakepit.Pool.Names.register(config.name) do
        :ok -> {:cont, :ok}
        {:error, message} -> {:halt, {:error, {:name_taken, message}}}
      end
    end)
  end

  # Callers find the batched tools' table and the batcher from this
  # process's pid (Snakepit.Pool.Names.server_info/1).
  defp start_batching(default) do
    table = :ets.new(:snakepit_batched_tools, [:set, :protected, read_concurrency: true])

    with {:ok, batcher} <- Batcher.start_link(self()) do
      info = %{table: table, batcher: batcher, default: default}
      :ok = Snakepit.Pool.Names.register_server(info)
      {:ok, info}
    end
  end

  # Pool configs carry adapter_env (secrets): never in a crash report.
  @impl true
  def format_status(status), do: Snakepit.Redact.status(status)

  @impl true
  def handle_continue(:start_workers, state) do
    {:noreply, state.order |> Enum.reduce(state, &Slots.start_batch(&2, &1)) |> answer_waiters()}
  end

  # -- calls -----------------------------------------------------------------------

  @affinities [nil, :hint, :strict_queue, :strict_fail_fast]

  @impl true
  def handle_call({:checkout, request}, {caller, _} = from, state) do
    if valid_request?(request) do
      case Leases.checkout(state, request, caller, from) do
        # Calls wait: an elastic pool may grow (new slots only add).
        {:queued, state} -> {:noreply, Size.maybe_grow(state, request.pool || state.default)}
        reply_or_noreply -> reply_or_noreply
      end
    else
      malformed({:checkout, request})

      {:reply, {:error, Error.validation_error("malformed checkout request", %{pool: self()})},
       state}
    end
  end

  def handle_call({:await, kind, which}, from, state)
      when kind in [:ready, :complete] and (which == :all or is_atom(which)) do
    if which != :all and not Map.has_key?(state.pools, which) do
      {:reply, {:error, Errors.unknown_pool(which)}, state}
    else
      {:noreply, answer_waiters(%{state | waiters: [{from, kind, which} | state.waiters]})}
    end
  end

  def handle_call({:stats, which}, _from, state), do: {:reply, Stats.of(state, which), state}

  def handle_call({:list_workers, which}, _from, state) do
    pools = if which == :all, do: Map.values(state.pools), else: List.wrap(state.pools[which])
    ids = for pool <- pools, {id, w} <- pool.workers, w.status == :active, do: id
    {:reply, Enum.sort(ids), state}
  end

  # How many calls the pool can run at once now (execute_many's spread).
  def handle_call({:capacity, which}, _from, state) when is_atom(which) do
    name = which || state.default

    case state.pools[name] do
      nil ->
        {:reply, {:error, Errors.unknown_pool(name)}, state}

      pool ->
        slots =
          for {_id, %{status: :active} = w} <- pool.workers, reduce: 0, do: (n -> n + w.capacity)

        {:reply, {:ok, slots}, state}
    end
  end

  def handle_call({:worker_load, name, id}, _from, state) do
    load =
      case state.pools[name] do
        %{workers: %{^id => w}} -> w.load
        _ -> 0
      end

    {:reply, load, state}
  end

  def handle_call(:status, _from, state), do: {:reply, Stats.status(state), state}

  def handle_call(:worker_details, _from, state) do
    details =
      for {name, pool} <- state.pools, {id, w} <- pool.workers do
        %{pool: name, id: id, pid: w.pid, os_pid: w.os_pid, config: pool.config}
      end

    {:reply, details, state}
  end

  def handle_call({:recycle, name, id, reason}, _from, state)
      when is_map_key(state.pools, name) and is_binary(id) and is_atom(reason) do
    case Slots.recycle(state, name, id, reason) do
      {:ok, _new_id, state} -> {:reply, :ok, answer_waiters(state)}
      {error, state} -> {:reply, error, state}
    end
  end

  def handle_call({:recycle, _name, _id, _reason}, _from, state),
    do: {:reply, {:error, :not_found}, state}

  def handle_call({:resize, which, n}, _from, state) when is_integer(n) and n > 0 do
    name = if which == :all, do: state.default, else: which

    case state.runtime do
      %{^name => %{min: min, max: max}} when min < max and (n < min or n > max) ->
        {:reply,
         {:error,
          Error.validation_error(
            "pool #{inspect(name)} is elastic (#{min}..#{max} workers): its size must be " <>
              "within that range, got: #{n}",
            %{pool: name, option: :size, value: n, min: min, max: max}
          )}, state}

      %{^name => _} ->
        {:reply, :ok, state |> Size.resize(name, n, :resize) |> answer_waiters()}

      _ ->
        {:reply, {:error, Errors.unknown_pool(name)}, state}
    end
  end

  def handle_call({:restart, which, opts}, from, state) when is_list(opts) do
    name = if which == :all, do: state.default, else: which

    if Map.has_key?(state.pools, name) and Keyword.keyword?(opts) do
      {:noreply, state |> restart(name, from, opts) |> answer_waiters()}
    else
      {:reply, {:error, Errors.unknown_pool(name)}, state}
    end
  end

  # A request nobody sends on purpose: answered, logged, the pool goes on.
  def handle_call(request, _from, state) do
    malformed(request)
    {:reply, {:error, Error.validation_error("unknown request to the pool")}, state}
  end

  @impl true
  def handle_cast(message, state) do
    malformed(message)
    {:noreply, state}
  end

  defp malformed(message), do: Snakepit.Logger.malformed(:pool, "Snakepit.Pool", message)

  # The request a caller's checkout/2 builds from checked options; anything
  # else is refused before it reaches the scheduling state.
  defp valid_request?(
         %{
           ref: ref,
           request_id: request_id,
           pool: pool,
           session_id: session,
           affinity: affinity,
           stored_worker: stored,
           avoid: avoid,
           deadline: deadline,
           command: command,
           queue_cap: cap
         } = request
       )
       when map_size(request) == 10 and is_reference(ref) and is_binary(request_id) and
              (is_nil(command) or is_binary(command)) and
              is_atom(pool) and (is_nil(session) or is_binary(session)) and
              affinity in @affinities and (is_nil(stored) or is_binary(stored)) and
              is_list(avoid) and (deadline == :infinity or is_integer(deadline)) and
              (cap == :infinity or (is_integer(cap) and cap >= 0)),
       do: Enum.all?(avoid, &is_binary/1)

  defp valid_request?(_request), do: false

  # -- events ----------------------------------------------------------------------

  # Every event may settle a pool (a worker ready, a start failed, the
  # size changed): the callers of await_ready/2 hear at once.
  @impl true
  def handle_info(message, state), do: {:noreply, message |> event(state) |> answer_waiters()}

  # Messages naming a pool are taken only for a pool this process has;
  # anything else falls through to the last clause, which logs and drops it.
  defp event({:checkin, name, ref, outcome}, state)
       when is_map_key(state.pools, name) and is_reference(ref) and
              outcome in [:ok, :error, :cancel] do
    {actions, state} = Leases.checkin(state, name, ref, outcome)
    Slots.perform(state, name, actions)
  end

  # A caller whose call timed out asks for it to be stopped, and hears how
  # on `reply_to` (Snakepit.Pool.Checkout.stop/2).
  defp event({:stop, name, ref, reply_to}, state)
       when is_map_key(state.pools, name) and is_reference(ref) and is_reference(reply_to) do
    {actions, state} = Leases.stop_call(state, name, ref, true, reply_to)
    Slots.perform(state, name, actions)
  end

  # The worker's answer to a CancelTool the pool sent (Leases.stop_call/5).
  defp event({cref, reply}, state) when is_map_key(state.stopping, cref) do
    {name, actions, state} = Leases.stop_answered(state, cref, reply)
    Slots.perform(state, name, actions)
  end

  defp event({:stop_timeout, cref}, state) when is_map_key(state.stopping, cref),
    do: Leases.stop_timed_out(state, cref)

  defp event({:queue_timeout, name, ref, ms}, state) when is_map_key(state.pools, name),
    do: Leases.queue_timeout(state, name, ref, ms)

  # The held refusal of a call refused at arrival (see
  # Snakepit.Pool.Admission.refusal_delay/3).
  defp event({:refuse, from, error}, state) do
    GenServer.reply(from, {:error, error})
    state
  end

  # A queued request that can no longer finish within its deadline.
  defp event({:doomed, name, ref}, state) when is_map_key(state.pools, name),
    do: Leases.doomed(state, name, ref)

  defp event({:cancel_checkout, nil, ref}, state),
    do: event({:cancel_checkout, state.default, ref}, state)

  defp event({:cancel_checkout, name, ref}, state)
       when is_map_key(state.pools, name) and is_reference(ref) do
    {actions, state} = Leases.cancel_checkout(state, name, ref)
    Slots.perform(state, name, actions)
  end

  defp event({:next_batch, name}, state) when is_map_key(state.pools, name) do
    state
    |> ServerState.update_runtime(name, &Runtime.batch_timer(&1, nil))
    |> Slots.start_batch(name)
  end

  defp event({:worker_ready, name, %{id: id, pid: pid} = worker}, state)
       when is_map_key(state.pools, name) and is_binary(id) and is_pid(pid),
       do: Slots.worker_ready(state, name, worker)

  defp event({:worker_failed, name, id, %{message: _, details: %{}} = error}, state)
       when is_map_key(state.pools, name) and is_binary(id),
       do: Slots.worker_failed(state, name, id, error)

  defp event({:worker_restarting, name, id, %{failures: _, delay_ms: _} = info}, state)
       when is_map_key(state.pools, name),
       do: ServerState.update_pool(state, name, &State.worker_restarting(&1, id, info))

  defp event({:worker_restarting, _name, _id, _info}, state), do: state

  defp event({:scale_tick, name}, state) when is_map_key(state.pools, name) do
    state = state |> Size.maybe_grow(name) |> Size.maybe_shrink(name) |> Slots.stop_drained(name)
    schedule_scale(state.pools[name].config)
    state
  end

  # A pool's watched Python files changed (Snakepit.Pool.Reloader).
  defp event({:reload, name, [_ | _] = files} = message, state)
       when is_map_key(state.pools, name) do
    if Enum.all?(files, &is_binary/1) do
      reload(state, name, files)
    else
      malformed(message)
      state
    end
  end

  defp event({:max_requests, name, id}, state)
       when is_map_key(state.pools, name) and is_binary(id) do
    case Slots.recycle(state, name, id, :max_requests) do
      {:ok, _new_id, state} -> state
      {_error, state} -> state
    end
  end

  defp event(:prune_sessions, state) do
    older = Snakepit.Pool.Deadline.now() - Defaults.session_default_ttl() * 1_000

    state =
      Enum.reduce(state.order, state, fn name, acc ->
        acc
        |> ServerState.update_pool(name, &State.prune_sessions(&1, older))
        |> Slots.stop_drained(name)
      end)

    schedule_prune()
    state
  end

  # The periodic snapshot of each pool (the older guide's pool status event).
  defp event(:pool_status, state) do
    for name <- state.order do
      Telemetry.emit(
        [:snakepit, :pool, :status],
        Stats.status_measurements(state.pools[name]),
        %{node: node(), pool_name: name}
      )
    end

    schedule_status()
    state
  end

  defp event({:DOWN, ref, :process, _pid, reason}, state) do
    cond do
      Map.has_key?(state.callers, ref) ->
        {{name, req_ref}, callers} = Map.pop(state.callers, ref)
        {actions, state} = Leases.caller_down(%{state | callers: callers}, name, req_ref)
        Slots.perform(state, name, actions)

      Map.has_key?(state.monitors, ref) ->
        {{name, id, pid}, monitors} = Map.pop(state.monitors, ref)
        Slots.worker_down(%{state | monitors: monitors}, name, id, pid, reason)

      Map.has_key?(state.starters, ref) ->
        {{name, id}, starters} = Map.pop(state.starters, ref)
        Slots.starter_down(%{state | starters: starters}, name, id, reason)

      Map.has_key?(state.reloaders, ref) ->
        reloader_down(state, ref, reason)

      true ->
        state
    end
  end

  # A late answer to a CancelTool already given up on, or its timer firing
  # as the answer came.
  defp event({ref, _late}, state) when is_reference(ref), do: state
  defp event({:stop_timeout, ref}, state) when is_reference(ref), do: state

  defp event(other, state) do
    malformed(other)
    state
  end

  # -- restarts, reloads, timers ---------------------------------------------------------

  defp restart(state, name, from, opts),
    do: state |> Restart.start(name, from, opts) |> Slots.advance_restart(name)

  defp reload(state, name, files) do
    Telemetry.emit([:snakepit, :pool, :reload], %{files: length(files)}, %{
      pool: name,
      files: Enum.take(files, 10)
    })

    Snakepit.Logger.info(
      :lifecycle,
      "pool #{inspect(name)}: #{length(files)} Python files changed " <>
        "(#{files |> Enum.take(3) |> Enum.map_join(", ", &Path.basename/1)}); restarting it"
    )

    restart(state, name, nil, rolling: true, reason: :reload)
  end

  defp start_reloader(state, %{reload: reload} = config) when reload not in [false, nil] do
    case Reloader.start(self(), config) do
      {:ok, pid} ->
        %{state | reloaders: Map.put(state.reloaders, Process.monitor(pid), config.name)}

      {:error, reason} ->
        Snakepit.Logger.error(
          :lifecycle,
          "pool #{inspect(config.name)}: cannot watch its Python files: #{inspect(reason)}"
        )

        state
    end
  end

  defp start_reloader(state, _config), do: state

  defp reloader_down(state, ref, reason) do
    {name, reloaders} = Map.pop(state.reloaders, ref)
    state = %{state | reloaders: reloaders}

    if reason in [:normal, :shutdown] do
      state
    else
      Snakepit.Logger.error(
        :lifecycle,
        "the file watcher of pool #{inspect(name)} stopped (#{inspect(reason)}); restarting it"
      )

      start_reloader(state, state.pools[name].config)
    end
  end

  # An elastic pool reconsiders its size every tick (Snakepit.Pool.Scaling).
  defp schedule_scale(config) do
    if Config.elastic?(config),
      do:
        Process.send_after(
          self(),
          {:scale_tick, config.name},
          Scaling.tick_ms(config.scale_down_after_ms)
        )
  end

  defp schedule_prune,
    do: Process.send_after(self(), :prune_sessions, Defaults.session_cleanup_interval())

  defp schedule_status do
    case Defaults.pool_status_interval_ms() do
      ms when is_integer(ms) and ms > 0 -> Process.send_after(self(), :pool_status, ms)
      _off -> nil
    end
  end

  # -- waiters ---------------------------------------------------------------------------

  defp answer_waiters(%{waiters: []} = state), do: state

  defp answer_waiters(state) do
    waiting =
      Enum.reject(state.waiters, fn {from, kind, which} ->
        case readiness(state, kind, which) do
          :waiting ->
            false

          reply ->
            GenServer.reply(from, reply)
            true
        end
      end)

    %{state | waiters: waiting}
  end

  defp readiness(state, kind, which) do
    pools =
      if which == :all,
        do: Enum.map(state.order, &state.pools[&1]),
        else: [state.pools[which]]

    reached? =
      case kind do
        :ready -> &(&1.status == :ready)
        :complete -> &State.init_complete?/1
      end

    cond do
      failed = Enum.find(pools, &(&1.status == :failed)) ->
        {:error, Errors.checkout_error(:pool_failed, failed, %{})}

      Enum.all?(pools, reached?) ->
        :ok

      true ->
        :waiting
    end
  end
end
