defmodule Snakepit.Pool.Batching do
  @moduledoc """
  Many calls per message: the pool's dynamic batching of batched tools
  and `Snakepit.execute_many/3`.

  ## Batched tools

  A Python tool declared `@tool(batch=True, max_batch_size: 64,
  max_batch_delay_ms: 2)` takes a list of argument dicts and returns one
  result per item. Its worker says so when it registers its tools
  (`Snakepit.Bridge.ToolRegistry.batched_tools/1`), and the pool records
  it when the worker is ready: nothing is configured on the Elixir side.

  Callers still call `Snakepit.execute("embed", %{text: t})`. Such a call
  goes to the pool's `Snakepit.Pool.Batcher` instead of leasing a worker
  itself; the batcher coalesces the concurrent calls of each tool (see
  `Snakepit.Pool.Batches`) and a runner process sends each batch as one
  message to one worker, then hands every caller its own `{:ok, result}`
  or `{:error, error}`:

    * an item whose result slot holds an exception gets its own error;
    * an item whose deadline passes before its batch leaves is dropped from
      it with a `:timeout` error; a caller whose deadline passes while its
      batch runs gets a `:timeout` error at its deadline, as any call;
    * a worker crash fails each item of the batch with the crash error
      (`details.reason: :worker_crash`), except idempotent items
      (`idempotent: true`), which the crash barrier retries on another
      worker, as it retries ordinary calls;
    * a failure of the message as a whole (an unknown tool, a batch larger
      than `max_message_bytes`, the pool refusing the batch as
      `:overloaded`) is every item's error.

  Batched tools are stateless: a batched call is not pinned to a session's
  worker (`session_id` and `affinity` do not route it) and Python sees no
  session in it; per-call `metadata` does not reach the tool. Streams are
  never batched (`execute_stream/4` runs a batched tool as a batch of one).
  A batch is one request to the pool: it leases one slot, counts once in
  `Snakepit.get_stats/1`, and the pool's run-time estimates for the tool
  are those of its batches.

  Each batch that leaves emits `[:snakepit, :pool, :batch]` with
  measurements `size` (items sent), `delay_us` (how long its first item
  waited for it to leave: the delay batching added) and `expired` (items
  dropped for their deadline), and metadata `pool`, `command` and
  `reason` (`:full` or `:delay`).

  ## The message

  A batch is an ordinary `ExecuteTool` message: metadata
  `snakepit-batch: "1"`, arguments `%{"items" => [args, ...]}`, binary
  parameter `name` of item `i` as `"i:name"`. The worker answers with one
  result `%{"ok" => [...], "errors" => [[i, type, message, traceback,
  kind], ...], "bytes" => [[i, base64], ...]}` (see the Python runtime).
  """

  alias Snakepit.{CrashBarrier, Error, Telemetry}
  alias Snakepit.GRPC.Client
  alias Snakepit.Transport.NativeCall
  alias Snakepit.Pool.{Checkout, Deadline, Errors}
  alias Snakepit.Telemetry.Correlation

  @flag "snakepit-batch"
  @max_size 10_000
  @max_delay_ms 10_000
  @default_size 64
  @default_delay_ms 2
  # execute_many sends at most this many items per message unless told.
  @max_chunk 1_000

  @type config :: %{max_batch_size: pos_integer(), max_batch_delay_ms: non_neg_integer()}
  @type item :: {term(), map(), map() | nil, boolean(), Deadline.t()}
  @type result :: {:ok, term()} | {:error, Error.t() | Exception.t()}

  @doc """
  The batch settings in a Python tool's metadata (string keys, as the
  worker registers them), or `nil` for a tool that is not batched.

      iex> Snakepit.Pool.Batching.config_of(%{"batch" => "true", "max_batch_size" => "8"})
      %{max_batch_size: 8, max_batch_delay_ms: 2}
      iex> Snakepit.Pool.Batching.config_of(%{"category" => "demo"})
      nil
  """
  @spec config_of(term()) :: config() | nil
  def config_of(%{"batch" => "true"} = meta) do
    with {:ok, size} <- setting(meta, "max_batch_size", @default_size, 1, @max_size),
         {:ok, delay} <- setting(meta, "max_batch_delay_ms", @default_delay_ms, 0, @max_delay_ms) do
      %{max_batch_size: size, max_batch_delay_ms: delay}
    else
      _ -> nil
    end
  end

  def config_of(_metadata), do: nil

  defp setting(meta, key, default, low, high) do
    case Map.fetch(meta, key) do
      :error ->
        {:ok, default}

      {:ok, text} when is_binary(text) ->
        case Integer.parse(text) do
          {n, ""} when n >= low and n <= high -> {:ok, n}
          _ -> :error
        end

      _ ->
        :error
    end
  end

  # -- routing (in the caller) -------------------------------------------------

  @some_batched {__MODULE__, :some_batched}

  @doc false
  # Where a call of `command` to the pool `name` of pool process `pid`
  # goes: nil (an ordinary call) or the batcher and the tool's settings.
  @spec route(pid(), atom() | nil, String.t()) ::
          %{batcher: pid(), pool: atom(), config: config()} | nil
  def route(pid, name, command) do
    # Until some pool has a batched tool (most never do), no lookup at all.
    if :persistent_term.get(@some_batched, false), do: lookup(pid, name, command)
  end

  @doc false
  # A pool learned a batched tool: callers start looking them up. Set once
  # per VM and never cleared (clearing a persistent term costs every
  # process a scan).
  @spec note_batched_tool() :: :ok
  def note_batched_tool do
    unless :persistent_term.get(@some_batched, false),
      do: :persistent_term.put(@some_batched, true)

    :ok
  end

  defp lookup(pid, name, command) do
    case Snakepit.Pool.Names.server_info(pid) do
      %{table: table, batcher: batcher, default: default} ->
        pool = name || default

        case :ets.lookup(table, {pool, command}) do
          [{_, config}] -> %{batcher: batcher, pool: pool, config: config}
          [] -> nil
        end

      nil ->
        nil
    end
  rescue
    # The pool stopped between the lookups.
    ArgumentError -> nil
  end

  @doc false
  # A batched call: the item goes to the batcher, the answer comes back
  # to this process, by the call's own deadline.
  @spec call(map(), String.t(), map(), keyword(), Deadline.t()) :: result()
  def call(target, command, args, opts, deadline) do
    %{batcher: batcher, pool: pool, config: config} = target
    idempotent = Keyword.get(opts, :idempotent) == true or CrashBarrier.idempotent?(args)
    # Answered through the monitor's alias: a late answer (after this call
    # gave up) is dropped by the runtime, never left in the mailbox.
    mref = :erlang.monitor(:process, batcher, [{:alias, :reply_demonitor}])
    item = {mref, args, Keyword.get(opts, :binary_parameters), idempotent, deadline}
    send(batcher, {:batch_item, pool, command, config, item})

    receive do
      {^mref, result} ->
        result

      {:DOWN, ^mref, :process, _, reason} ->
        details = %{pool: pool, tool: command}

        {:error,
         if Errors.shutdown_reason?(reason) do
           Errors.shutdown("the pool stopped before the batched call was answered", details)
         else
           Error.pool_error(
             "the pool's batcher stopped (#{inspect(reason)}) before the call was answered",
             details
           )
         end}
    after
      wait(deadline) ->
        Process.demonitor(mref, [:flush])
        {:error, timeout_error(command, pool)}
    end
  end

  defp wait(:infinity), do: :infinity
  defp wait(deadline), do: Deadline.remaining(deadline)

  @doc false
  def timeout_error(command, pool) do
    Error.timeout_error("#{command} did not finish in time (batched)", %{
      tool: command,
      pool: pool
    })
  end

  # -- running batch messages ----------------------------------------------------

  @doc false
  # Runs `items` of `command` as one message on a worker of the pool in
  # `opts[:pool]`: leases a slot until `deadline`, sends, splits the reply.
  # `items` may be a function of no argument, called once the slot is
  # leased (or refused), that gives them (the batcher's runner). A crash
  # of the worker fails the items, except the idempotent ones the crash
  # barrier retries on another worker. Returns `[{tag, result}]`, every
  # item once.
  @spec run(keyword(), String.t(), Deadline.t(), [item()] | (-> [item()]), non_neg_integer(), [
          String.t()
        ]) :: [{term(), result()}]
  def run(opts, command, deadline, items, n \\ 0, avoid \\ []) do
    lease_opts = if avoid == [], do: opts, else: Keyword.put(opts, :avoid, avoid)

    case Checkout.checkout(lease_opts, deadline) do
      {:ok, lease} ->
        case fetch(items) do
          [] ->
            Checkout.checkin(lease, :ok)
            []

          items ->
            result = send_batch(lease, opts, command, items)
            Checkout.checkin(lease, result)

            case CrashBarrier.crash_info(result, lease.crash_barrier) do
              nil -> split(result, items, command, lease.worker)
              info -> crashed(opts, command, items, result, info, lease, n, avoid)
            end
        end

      {:error, error} ->
        items = fetch(items)

        # Items that joined the batch after its runner asked for a slot
        # may have a later deadline than that request: a refusal for
        # want of time is not theirs yet.
        {later, failed} =
          if out_of_time?(error),
            do: Enum.split_with(items, &later?(elem(&1, 4), deadline)),
            else: {[], items}

        failed = for item <- failed, do: {elem(item, 0), {:error, error}}

        if later == [] do
          failed
        else
          next = Enum.reduce(later, nil, fn item, acc -> latest(acc, elem(item, 4)) end)
          failed ++ run(opts, command, next, later, n, avoid)
        end
    end
  end

  defp out_of_time?(%Error{category: :timeout}), do: true
  defp out_of_time?(%Error{details: %{reason: :overloaded}}), do: true
  defp out_of_time?(_error), do: false

  defp later?(_item_deadline, :infinity), do: false
  defp later?(:infinity, _deadline), do: true
  defp later?(item_deadline, deadline), do: item_deadline > deadline

  defp fetch(items) when is_function(items, 0), do: items.()
  defp fetch(items), do: items

  defp send_batch(lease, opts, command, items) do
    deadline = Enum.reduce(items, nil, fn item, acc -> latest(acc, elem(item, 4)) end)

    call_opts = [
      metadata: Map.put(Correlation.worker_metadata(opts), @flag, "1"),
      binary_parameters: binaries(items),
      correlation_id: Keyword.get(opts, :correlation_id),
      deadline: Deadline.rpc_deadline(deadline),
      request_id: lease.request_id,
      stop: fn -> Checkout.stop(lease, deadline) end
    ]

    args = %{"items" => Enum.map(items, &elem(&1, 1))}
    lease.worker |> Client.execute(command, args, call_opts) |> Checkout.confirm_crash(lease)
  end

  defp latest(nil, deadline), do: deadline
  defp latest(:infinity, _), do: :infinity
  defp latest(_, :infinity), do: :infinity
  defp latest(a, b), do: max(a, b)

  defp binaries(items) do
    if Enum.all?(items, &(elem(&1, 2) in [nil, %{}])) do
      nil
    else
      for {item, i} <- Enum.with_index(items),
          {name, bytes} <- elem(item, 2) || %{},
          into: %{},
          do: {"#{i}:#{name}", bytes}
    end
  end

  # The crash barrier, per item: the idempotent ones go again elsewhere.
  defp crashed(opts, command, items, result, info, lease, n, avoid) do
    config = lease.crash_barrier
    {again, failed} = Enum.split_with(items, &elem(&1, 3))

    retry? =
      again != [] and CrashBarrier.retry_allowed?(config, true, n) and
        Enum.any?(again, &(Deadline.remaining(elem(&1, 4)) > 0))

    {again, failed} = if retry?, do: {again, failed}, else: {[], items}
    error = CrashBarrier.normalize_crash_error(result, info)
    failed = for item <- failed, do: {elem(item, 0), error}

    if again == [] do
      failed
    else
      backoff = CrashBarrier.retry_backoff(config, n)

      Telemetry.emit(
        [:snakepit, :crash_barrier, :retry],
        %{attempt: n + 1, backoff_ms: backoff},
        %{pool: lease.pool, worker_id: info.worker_id, classification: info.classification}
      )

      deadline = Enum.reduce(again, nil, fn item, acc -> latest(acc, elem(item, 4)) end)
      # A deliberate pause before the retry, not a wait for an event.
      Process.sleep(min(backoff, Deadline.remaining(deadline)))
      opts = Checkout.retry_opts(opts)
      failed ++ run(opts, command, deadline, again, n + 1, [info.worker_id | avoid])
    end
  end

  @doc false
  # Each item's result from a batch message's reply.
  @spec split(term(), [item()], String.t(), map()) :: [{term(), result()}]
  def split({:ok, %{"ok" => ok, "errors" => [], "bytes" => []}}, items, _command, _worker)
      when is_list(ok) and length(ok) == length(items),
      do: Enum.zip_with(items, ok, fn item, value -> {elem(item, 0), {:ok, value}} end)

  def split({:ok, %{"ok" => ok, "errors" => errors, "bytes" => bytes}}, items, command, worker)
      when is_list(ok) and is_list(errors) and is_list(bytes) and length(ok) == length(items) do
    with {:ok, special} <- special(errors, bytes, command, worker, %{}) do
      items
      |> Enum.zip(ok)
      |> Enum.with_index()
      |> Enum.map(fn {{item, value}, i} ->
        {elem(item, 0), Map.get_lazy(special, i, fn -> {:ok, value} end)}
      end)
    else
      :error -> malformed(items, command, worker)
    end
  end

  def split({:ok, _other}, items, command, worker), do: malformed(items, command, worker)

  def split({:error, _} = error, items, _command, _worker),
    do: for(item <- items, do: {elem(item, 0), error})

  defp special([], [], _command, _worker, acc), do: {:ok, acc}

  defp special([[i, type, message, traceback, kind] | rest], bytes, command, worker, acc)
       when is_integer(i) and is_binary(type) and is_binary(message) and is_binary(traceback) and
              is_binary(kind) do
    error =
      NativeCall.translate(
        {:error, {:tool_error, type, message, traceback, kind}},
        command,
        worker
      )

    special(rest, bytes, command, worker, Map.put(acc, i, error))
  end

  defp special([], [[i, encoded] | rest], command, worker, acc)
       when is_integer(i) and is_binary(encoded) do
    case Base.decode64(encoded) do
      {:ok, bytes} -> special([], rest, command, worker, Map.put(acc, i, {:ok, bytes}))
      :error -> :error
    end
  end

  defp special(_errors, _bytes, _command, _worker, _acc), do: :error

  defp malformed(items, command, worker) do
    error =
      Error.worker_error(
        "worker #{worker.id} answered a batch of #{command} with a malformed reply",
        %{tool: command, worker_id: worker.id}
      )

    for item <- items, do: {elem(item, 0), {:error, error}}
  end

  @doc "The largest number of items `execute_many/3` puts in one message unless told."
  @spec max_chunk() :: pos_integer()
  def max_chunk, do: @max_chunk
end
