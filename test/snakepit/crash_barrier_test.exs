defmodule Snakepit.CrashBarrierTest do
  use ExUnit.Case, async: true

  alias Snakepit.{CrashBarrier, Error}
  alias Snakepit.Worker.TaintRegistry

  doctest Snakepit.CrashBarrier

  defp crash(status),
    do:
      {:error,
       Error.worker_error("crashed", %{
         reason: :worker_crash,
         worker_id: "w1",
         exit_status: status
       })}

  test "a crash result is recognised and classified; other errors are not crashes" do
    config = CrashBarrier.config(%{crash_barrier: %{enabled: true}})

    assert %{worker_id: "w1", classification: :killed, exit_status: {:signaled, 9}} =
             CrashBarrier.crash_info(crash({:signaled, 9}), config)

    assert %{classification: :segfault} = CrashBarrier.crash_info(crash({:signaled, 11}), config)
    assert %{classification: :exit} = CrashBarrier.crash_info(crash({:exited, 1}), config)
    assert CrashBarrier.crash_info({:error, Error.timeout_error("slow")}, config) == nil
    assert CrashBarrier.crash_info({:ok, 1}, config) == nil
  end

  test "retries need the barrier on, an idempotent call, and attempts left" do
    on = CrashBarrier.config(%{crash_barrier: [enabled: true, max_retries: 2]})
    assert CrashBarrier.enabled?(on)
    # Each attempt below max_retries may retry an idempotent call ...
    assert CrashBarrier.retry_allowed?(on, true, 0)
    assert CrashBarrier.retry_allowed?(on, true, 1)
    # ... and no more once they are spent, or for a call that is not idempotent.
    refute CrashBarrier.retry_allowed?(on, true, 2)
    refute CrashBarrier.retry_allowed?(on, false, 0)

    # The default policy (retry: :idempotent, one retry) allows exactly one.
    default = CrashBarrier.config(%{crash_barrier: [enabled: true]})

    assert for(a <- 0..2, do: CrashBarrier.retry_allowed?(default, true, a)) == [
             true,
             false,
             false
           ]

    off = CrashBarrier.config(%{})
    refute CrashBarrier.enabled?(off)
    refute CrashBarrier.retry_allowed?(off, true, 0)

    never = CrashBarrier.config(%{crash_barrier: [enabled: true, retry: :never]})
    refute CrashBarrier.retry_allowed?(never, true, 0)

    none = CrashBarrier.config(%{crash_barrier: [enabled: true, max_retries: 0]})
    refute CrashBarrier.retry_allowed?(none, true, 0)
  end

  test "normalize_crash_error keeps the error and adds the crash info" do
    info = %{worker_id: "w1", classification: :killed}
    {:error, error} = CrashBarrier.normalize_crash_error(crash({:signaled, 9}), info)
    assert error.details.crash == info
    assert error.category == :worker
    ok = {:ok, 1}
    assert CrashBarrier.normalize_crash_error(ok, info) == ok
  end

  test "tainting a worker, its expiry and its restart budget" do
    id = "taint-#{System.unique_integer([:positive])}"
    config = %{taint_ms: 60_000, max_retries: 1}
    refute CrashBarrier.worker_tainted?(id)

    :ok =
      CrashBarrier.taint_worker(
        :p,
        id,
        %{classification: :killed, exit_status: {:signaled, 9}},
        config
      )

    assert CrashBarrier.worker_tainted?(id)
    assert %{reason: :killed, pool: :p} = TaintRegistry.worker_info(id)
    :ok = TaintRegistry.clear_worker(id)
    refute TaintRegistry.worker_tainted?(id)

    :ok = TaintRegistry.taint_worker(id, duration_ms: 0)
    refute TaintRegistry.worker_tainted?(id)
    assert TaintRegistry.worker_info(id) == nil
  end

  test "consume_restart/1 hands out a taint's restart notice once, even to racing callers" do
    id = "w-restart-#{System.unique_integer([:positive])}"
    assert TaintRegistry.consume_restart(id) == :error

    :ok = TaintRegistry.taint_worker(id, reason: :killed)

    claims =
      1..8
      |> Enum.map(fn _ -> Task.async(fn -> TaintRegistry.consume_restart(id) end) end)
      |> Task.await_many()

    assert [{:ok, %{worker_id: ^id, reason: :killed}}] =
             Enum.filter(claims, &match?({:ok, _}, &1))

    assert TaintRegistry.consume_restart(id) == :error
    # Still tainted: the notice is consumed, not the taint.
    assert TaintRegistry.worker_tainted?(id)

    # A new taint has a new notice.
    :ok = TaintRegistry.taint_worker(id)
    assert {:ok, _} = TaintRegistry.consume_restart(id)

    :ok = TaintRegistry.taint_worker(id, duration_ms: 0)
    assert TaintRegistry.consume_restart(id) == :error
    assert TaintRegistry.consume_restart(:not_an_id) == :error
  end
end
