defmodule Snakepit.Pool.Server do
  @moduledoc """
  The process behind `Snakepit.Pool`: plumbing only. It receives requests,
  worker and caller events, and turns them into calls of the pure
  `Snakepit.Pool.State` (scheduling) and `Snakepit.Pool.Runtime` (batches,
  recycling), carrying out their actions through `Snakepit.Pool.Slots`
  (worker slots: starting, readiness, deaths, recycling) and
  `Snakepit.Pool.Leases` (leases: grants, check-ins, stopping calls whose
  caller gave up).

  The state is a map: `pools` and `runtime` (one `State` and one `Runtime`
  per pool name), `order` and `default` (the configured pools), monitors of
  `starters`, workers (`monitors`) and `callers`, CancelTool calls in
  flight (`stopping`) and `waiters` of `await_ready/2`.
  """
  use GenServer

  alias Snakepit.{Config, CrashBarrier, Defaults, Error, Telemetry}
  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.GRPC.Client

  alias Snakepit.Pool.{
    Admission,
    Batcher,
    Deadline,
    Errors,
    Leases,
    Reloader,
    Restart,
    Runtime,
    Scaling,
    Slots,
    State,
    Timings
  }

  alias Snakepit.Worker.LifecycleManager

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
      state = %{
        pools: Map.new(configs, &{&1.name, State.new(&1)}),
        order: Enum.map(configs, & &1.name),
        default: hd(configs).name,
        runtime: Map.new(configs, &{&1.name, Runtime.new(&1)}),
        # Where this pool process starts its workers (a pool in a host's
        # own tree has a worker supervisor of its own).
        worker_supervisor: Keyword.get(opts, :worker_supervisor, Snakepit.Pool.WorkerSupervisor),
        starters: %{},
        monitors: %{},
        callers: %{},
        # CancelTool calls in flight: ref => {pool, lease ref, worker pid, timer}
        stopping: %{},
        waiters: [],
        # File watchers of pools with reload on: monitor ref => pool name.
        reloaders: %{},
        # The batched tools of each pool ({pool, tool} => settings), read
        # by callers (Snakepit.Pool.Batching).
        batched: batching.table
      }

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

  # A ready worker's batched tools become its pool's.
  defp learn_batched_tools(state, name, worker_id) do
    for {tool, config} <- ToolRegistry.batched_tools(worker_id),
        do: :ets.insert(state.batched, {{name, tool}, config})

    state
  end

  # Pool configs carry adapter_env (secrets): never in a crash report.
  @impl true
  def format_status(status), do: Snakepit.Redact.status(status)

  @impl true
  def handle_continue(:start_workers, state) do
    {:noreply, Enum.reduce(state.order, state, &Slots.start_batch(&2, &1))}
  end

  @affinities [nil, :hint, :strict_queue, :strict_fail_fast]

  @impl true
  def handle_call({:checkout, request}, {caller, _} = from, state) do
    if valid_request?(request) do
      checkout(request, caller, from, state)
    else
      malformed({:checkout, request})

      {:reply, {:error, Error.validation_error("malformed checkout request", %{pool: self()})},
       state}
    end
  end

  def handle_call({:await, kind, which}, from, state)
      when kind in [:ready, :complete] and (which == :all or is_atom(which)) do
    if which != :all and not Map.has_key?(state.pools, which) do
      {:reply, {:error, Error.pool_error("unknown pool #{inspect(which)}", %{pool: which})},
       state}
    else
      {:noreply, answer_waiters(%{state | waiters: [{from, kind, which} | state.waiters]})}
    end
  end

  def handle_call({:stats, :all}, _from, state) do
    pools = Map.values(state.pools)

    stats =
      state.order
      |> Enum.map(&pool_stats(state, &1))
      |> Enum.reduce(&Map.merge(&1, &2, fn k, a, b -> sum_stat(k, a, b) end))
      |> Map.merge(timing_stats(pools, Enum.map(state.order, &state.runtime[&1].timings)))

    {:reply, stats, state}
  end

  def handle_call({:stats, name}, _from, state) do
    case Map.fetch(state.pools, name) do
      {:ok, pool} ->
        stats =
          Map.merge(pool_stats(state, name), timing_stats([pool], [state.runtime[name].timings]))

        {:reply, stats, state}

      :error ->
        {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})},
         state}
    end
  end

  def handle_call({:list_workers, which}, _from, state) do
    pools = if which == :all, do: Map.values(state.pools), else: List.wrap(state.pools[which])

    ids =
      for pool <- pools,
          {id, w} <- pool.workers,
          w.status == :active,
          do: id

    {:reply, Enum.sort(ids), state}
  end

  # How many calls the pool can run at once now (execute_many's spread).
  def handle_call({:capacity, which}, _from, state) when is_atom(which) do
    name = which || state.default

    case state.pools[name] do
      nil ->
        {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})},
         state}

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

  def handle_call(:status, _from, state), do: {:reply, status(state), state}

  def handle_call(:worker_details, _from, state) do
    details =
      for {name, pool} <- state.pools, {id, w} <- pool.workers do
        %{pool: name, id: id, pid: w.pid, os_pid: w.os_pid, config: pool.config}
      end

    {:reply, details, state}
  end

  def handle_call({:recycle, name, id, reason}, _from, state)
      when is_map_key(state.pools, name) and is_binary(id) and is_atom(reason) do
    {reply, state} = Slots.recycle(state, name, id, reason)
    {:reply, reply, state}
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
        {:reply, :ok, Slots.resize(state, name, n, :resize)}

      _ ->
        {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})},
         state}
    end
  end

  def handle_call({:restart, which, opts}, from, state) when is_list(opts) do
    name = if which == :all, do: state.default, else: which

    if Map.has_key?(state.pools, name) and Keyword.keyword?(opts) do
      {:noreply, Restart.start(state, name, from, opts)}
    else
      {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})}, state}
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

  defp checkout(request, caller, from, state) do
    name = request.pool || state.default

    case Map.fetch(state.pools, name) do
      :error ->
        {:reply, {:error, Error.pool_error("unknown pool #{inspect(name)}", %{pool: name})},
         state}

      {:ok, pool} ->
        mref = Process.monitor(caller)
        request = %{request | pool: name} |> Map.merge(%{from: from, mref: mref, now: now()})

        case State.checkout(pool, request) do
          {:granted, worker, pool} ->
            Leases.note_session(request, worker)

            {:reply, {:ok, Leases.lease(state, request, worker)},
             %{
               put_pool(state, name, pool)
               | callers: Map.put(state.callers, mref, {name, request.ref})
             }}

          {:queued, pool} ->
            timer = Leases.schedule_queue_timeout(request, pool)
            pool = State.annotate_waiting(pool, request.ref, %{timer: timer})

            state = %{
              put_pool(state, name, pool)
              | callers: Map.put(state.callers, mref, {name, request.ref})
            }

            # Calls wait: an elastic pool may grow (new slots only add).
            {:noreply, Slots.maybe_grow(state, name)}

          {:error, :overloaded, pool} ->
            Process.demonitor(mref, [:flush])
            error = Errors.checkout_error(:overloaded, pool, request)
            delay = Admission.refusal_delay(request, now(), error.details.retry_after_ms)
            Process.send_after(self(), {:refuse, from, error}, delay)
            {:noreply, put_pool(state, name, pool)}

          {:error, reason, pool} ->
            Process.demonitor(mref, [:flush])

            {:reply, {:error, Errors.checkout_error(reason, pool, request)},
             put_pool(state, name, pool)}
        end
    end
  end

  defp status(state) do
    now = now()

    for name <- state.order do
      pool = state.pools[name]
      rt = state.runtime[name]

      workers =
        for {id, w} <- Enum.sort_by(pool.workers, &elem(&1, 0)) do
          %{
            id: id,
            os_pid: Map.get(w, :os_pid),
            load: w.load,
            capacity: w.capacity,
            status: w.status,
            uptime_ms: Runtime.uptime(rt, id, now)
          }
        end

      %{
        name: name,
        profile: pool.config.worker_profile,
        pool_size: rt.size,
        size: rt.size,
        min_workers: rt.min,
        max_workers: rt.max,
        stats: Map.merge(pool_stats(state, name), timing_stats([pool], [rt.timings])),
        workers: workers
      }
    end
  end

  @impl true
  # Messages naming a pool are taken only for a pool this process has;
  # anything else falls through to the last clause, which logs and drops it.
  def handle_info({:checkin, name, ref, :cancel}, state)
      when is_map_key(state.pools, name) and is_reference(ref) do
    {:noreply, Leases.stop_call(state, name, ref, true)}
  end

  def handle_info({:checkin, name, ref, outcome}, state)
      when is_map_key(state.pools, name) and is_reference(ref) and outcome in [:ok, :error] do
    {:noreply, Leases.release(state, name, ref, outcome)}
  end

  # The worker's answer to a CancelTool the pool sent (stop_call/4).
  def handle_info({cref, reply}, state) when is_map_key(state.stopping, cref) do
    {{name, ref, worker, timer}, stopping} = Map.pop(state.stopping, cref)
    Process.cancel_timer(timer)
    state = %{state | stopping: stopping}

    case reply do
      {:ok, answer} when answer != "running" ->
        Leases.emit_stopped(name, worker, Client.stop_state(answer))
        {:noreply, Leases.release(state, name, ref, :error, false)}

      _still_running_or_unreachable ->
        {:noreply, Leases.hard_stop(state, name, worker)}
    end
  end

  def handle_info({:stop_timeout, cref}, state) when is_map_key(state.stopping, cref) do
    {{name, _ref, worker, _timer}, stopping} = Map.pop(state.stopping, cref)
    {:noreply, Leases.hard_stop(%{state | stopping: stopping}, name, worker)}
  end

  def handle_info({:queue_timeout, name, ref, ms}, state) when is_map_key(state.pools, name) do
    case State.cancel(state.pools[name], ref, :timeout) do
      {:dropped, request, pool} ->
        Process.demonitor(request.mref, [:flush])
        Telemetry.emit([:snakepit, :pool, :queue, :timeout], %{timeout_ms: ms}, %{pool: name})

        GenServer.reply(request.from, {:error, Errors.queue_timeout(name, ms)})

        {:noreply,
         %{put_pool(state, name, pool) | callers: Map.delete(state.callers, request.mref)}}

      {:not_queued, _pool} ->
        {:noreply, state}
    end
  end

  # The held refusal of a call refused at arrival (see
  # Snakepit.Pool.Admission.refusal_delay/3).
  def handle_info({:refuse, from, error}, state) do
    GenServer.reply(from, {:error, error})
    {:noreply, state}
  end

  # A queued request that can no longer finish within its deadline.
  def handle_info({:doomed, name, ref}, state) do
    case State.cancel(state.pools[name], ref, :overloaded) do
      {:dropped, request, pool} ->
        Process.demonitor(request.mref, [:flush])
        GenServer.reply(request.from, {:error, Errors.checkout_error(:overloaded, pool, request)})

        {:noreply,
         %{put_pool(state, name, pool) | callers: Map.delete(state.callers, request.mref)}}

      {:not_queued, _pool} ->
        {:noreply, state}
    end
  end

  def handle_info({:cancel_checkout, nil, ref}, state),
    do: handle_info({:cancel_checkout, state.default, ref}, state)

  def handle_info({:cancel_checkout, name, ref}, state)
      when is_map_key(state.pools, name) and is_reference(ref) do
    state =
      case State.cancel(state.pools[name], ref, :caller_down) do
        {:dropped, request, pool} ->
          Leases.cancel_queue_timer(request)
          Process.demonitor(request.mref, [:flush])
          %{put_pool(state, name, pool) | callers: Map.delete(state.callers, request.mref)}

        {:not_queued, _} ->
          Leases.release(state, name, ref, :ok)
      end

    {:noreply, state}
  end

  def handle_info({:next_batch, name}, state) when is_map_key(state.pools, name) do
    state = put_runtime(state, name, Runtime.batch_timer(state.runtime[name], nil))
    {:noreply, Slots.start_batch(state, name)}
  end

  def handle_info({:worker_ready, name, %{id: id, pid: pid} = worker}, state)
      when is_map_key(state.pools, name) and is_binary(id) and is_pid(pid) do
    rt = state.runtime[name]

    if Runtime.member?(rt, id) or Runtime.replacement?(rt, id) do
      worker_ready(state, name, worker)
    else
      # Taken out of the pool while it started, or a retiring worker its
      # starter brought back after a crash: it stops for good.
      {:noreply, Leases.perform(state, name, [{:stop_worker, %{id: id}}])}
    end
  end

  def handle_info({:worker_failed, name, id, %{message: _, details: %{}} = error}, state)
      when is_map_key(state.pools, name) and is_binary(id) do
    rt = state.runtime[name]

    if Runtime.member?(rt, id) or Runtime.replacement?(rt, id),
      do: worker_failed(state, name, id, error),
      else: {:noreply, state}
  end

  def handle_info({:worker_restarting, name, id, %{failures: _, delay_ms: _} = info}, state) do
    case state.pools[name] do
      nil ->
        {:noreply, state}

      pool ->
        {:noreply, put_pool(state, name, State.worker_restarting(pool, id, info))}
    end
  end

  def handle_info({:scale_tick, name}, state) when is_map_key(state.pools, name) do
    state =
      state |> Slots.maybe_grow(name) |> Slots.maybe_shrink(name) |> Slots.stop_drained(name)

    schedule_scale(state.pools[name].config)
    {:noreply, state}
  end

  # A pool's watched Python files changed (Snakepit.Pool.Reloader).
  def handle_info({:reload, name, [_ | _] = files} = message, state)
      when is_map_key(state.pools, name) do
    if Enum.all?(files, &is_binary/1) do
      {:noreply, reload(state, name, files)}
    else
      malformed(message)
      {:noreply, state}
    end
  end

  def handle_info({:max_requests, name, id}, state)
      when is_map_key(state.pools, name) and is_binary(id) do
    {_reply, state} = Slots.recycle(state, name, id, :max_requests)
    {:noreply, state}
  end

  def handle_info(:prune_sessions, state) do
    older = now() - Defaults.session_default_ttl() * 1_000

    state =
      Enum.reduce(state.order, state, fn name, acc ->
        acc
        |> update_pool(name, &State.prune_sessions(&1, older))
        |> Slots.stop_drained(name)
      end)

    schedule_prune()
    {:noreply, state}
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state)
      when is_map_key(state.reloaders, ref) do
    {name, reloaders} = Map.pop(state.reloaders, ref)
    state = %{state | reloaders: reloaders}

    if reason in [:normal, :shutdown] do
      {:noreply, state}
    else
      Snakepit.Logger.error(
        :lifecycle,
        "the file watcher of pool #{inspect(name)} stopped (#{inspect(reason)}); restarting it"
      )

      {:noreply, start_reloader(state, state.pools[name].config)}
    end
  end

  # The periodic snapshot of each pool (the older guide's pool status event).
  def handle_info(:pool_status, state) do
    for name <- state.order do
      Telemetry.emit(
        [:snakepit, :pool, :status],
        State.status_measurements(state.pools[name]),
        %{node: node(), pool_name: name}
      )
    end

    schedule_status()
    {:noreply, state}
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    cond do
      Map.has_key?(state.callers, ref) ->
        {{name, req_ref}, callers} = Map.pop(state.callers, ref)
        {:noreply, Leases.caller_down(%{state | callers: callers}, name, req_ref)}

      Map.has_key?(state.monitors, ref) ->
        {{name, id, pid}, monitors} = Map.pop(state.monitors, ref)
        {:noreply, Slots.worker_down(%{state | monitors: monitors}, name, id, pid, reason)}

      Map.has_key?(state.starters, ref) ->
        {{name, id}, starters} = Map.pop(state.starters, ref)
        {:noreply, Slots.starter_down(%{state | starters: starters}, name, id, reason)}

      true ->
        {:noreply, state}
    end
  end

  # A late answer to a CancelTool already given up on, or its timer firing
  # as the answer came.
  def handle_info({ref, _late}, state) when is_reference(ref), do: {:noreply, state}
  def handle_info({:stop_timeout, ref}, state) when is_reference(ref), do: {:noreply, state}

  def handle_info(other, state) do
    malformed(other)
    {:noreply, state}
  end

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

    Restart.start(state, name, nil, rolling: true, reason: :reload)
  end

  defp worker_ready(state, name, worker) do
    ref = Process.monitor(worker.pid)
    rt = Runtime.ready(state.runtime[name], worker.id, now())
    state = put_runtime(state, name, rt)

    Telemetry.emit(
      [:snakepit, :worker, :initialized],
      %{initialization_time: Runtime.uptime(rt, worker.id, now())},
      %{worker_id: worker.id, pool: name}
    )

    CrashBarrier.maybe_emit_restart(name, worker.id)

    LifecycleManager.track_worker(
      name,
      worker.id,
      worker.pid,
      Slots.lifecycle_config(state, name, worker)
    )

    state =
      %{state | monitors: Map.put(state.monitors, ref, {name, worker.id, worker.pid})}
      |> learn_batched_tools(name, worker.id)
      |> update_pool(name, &State.add_worker(&1, worker))
      |> Slots.batch_settled(name, worker.id)
      |> Slots.replacement_ready(name, worker.id)

    {actions, pool} = State.dispatch(state.pools[name])

    {:noreply,
     state
     |> put_pool(name, pool)
     |> Leases.perform(name, actions)
     |> answer_waiters()
     |> Restart.advance(name)}
  end

  defp worker_failed(state, name, id, error) do
    Snakepit.Logger.error(:pool, "Snakepit worker #{id} failed to start: #{error.message}")

    if Runtime.replacement?(state.runtime[name], id) do
      # A failed replacement is not retried: the worker it was to replace
      # keeps serving.
      state = Slots.forget_starter(state, id)
      Slots.stop_async(id)

      {:noreply,
       state
       |> update_pool(name, &State.forget_slot(&1, id))
       |> Slots.replacement_failed(name, id)}
    else
      failing? = not Map.get(error.details, :transient, false)
      {actions, pool} = State.worker_failed(state.pools[name], id, error, failing?)

      {:noreply,
       state
       |> put_pool(name, pool)
       |> Leases.perform(name, actions)
       |> Slots.batch_settled(name, id)
       |> answer_waiters()}
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

  # A pool's counters, with its size and range.
  defp pool_stats(state, name) do
    rt = state.runtime[name]

    Map.merge(State.stats(state.pools[name]), %{
      size: rt.size,
      min_workers: rt.min,
      max_workers: rt.max
    })
  end

  defp schedule_prune,
    do: Process.send_after(self(), :prune_sessions, Defaults.session_cleanup_interval())

  defp schedule_status do
    case Defaults.pool_status_interval_ms() do
      ms when is_integer(ms) and ms > 0 -> Process.send_after(self(), :pool_status, ms)
      _off -> nil
    end
  end

  @doc false
  def answer_waiters(%{waiters: []} = state), do: state

  def answer_waiters(state) do
    {answered, waiting} =
      Enum.split_with(state.waiters, fn {from, kind, which} ->
        case readiness(state, kind, which) do
          :waiting ->
            false

          reply ->
            GenServer.reply(from, reply)
            true
        end
      end)

    _ = answered
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

  # Counters add up across pools; per-slot maps (`down`) merge; the queue
  # delay is the longest.
  defp sum_stat(:queue_delay_ms, a, b), do: max(a, b)
  defp sum_stat(_key, a, b) when is_map(a), do: Map.merge(a, b)
  defp sum_stat(_key, a, b), do: a + b

  defp now, do: Deadline.now()

  @doc false
  def put_pool(state, name, pool), do: %{state | pools: Map.put(state.pools, name, pool)}
  @doc false
  def update_pool(state, name, fun), do: put_pool(state, name, fun.(state.pools[name]))
  @doc false
  def put_runtime(state, name, rt), do: %{state | runtime: Map.put(state.runtime, name, rt)}

  # Busy share of capacity now, and wait/run percentiles over the window.
  defp timing_stats(pools, timings) do
    {load, capacity} =
      for pool <- pools, {_id, w} <- pool.workers, reduce: {0, 0} do
        {load, capacity} -> {load + w.load, capacity + w.capacity}
      end

    %{
      utilization: if(capacity == 0, do: 0.0, else: Float.round(load / capacity, 3)),
      wait_time_ms: Timings.percentiles(timings, :wait),
      run_time_ms: Timings.percentiles(timings, :run)
    }
  end
end
