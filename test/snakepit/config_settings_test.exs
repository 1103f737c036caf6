defmodule Snakepit.ConfigSettingsTest do
  # Settings that once did nothing now work (real workers), or say once
  # that they do nothing.
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureLog

  alias Snakepit.Test.AppPool

  test "capacity_strategy is accepted, has no effect, and says so once" do
    :persistent_term.erase({Snakepit.Config, :capacity_strategy_warned})

    log =
      capture_log(fn ->
        assert {:ok, %{capacity_strategy: :hybrid}} =
                 Snakepit.Config.validate_pool_config(%{name: :p, capacity_strategy: :hybrid})

        assert {:ok, _} =
                 Snakepit.Config.validate_pool_config(%{name: :q, capacity_strategy: :profile})
      end)

    assert [_one] = Regex.scan(~r/capacity_strategy :\w+ has no effect/, log)
  end

  test "thread_safety_checks: a tool not marked thread-safe running twice at once is reported" do
    AppPool.start!(
      python_path: [AppPool.fixtures_dir()],
      pools: [
        %{
          name: :default,
          pool_size: 1,
          worker_profile: :thread,
          threads_per_worker: 2,
          thread_safety_checks: true,
          adapter_args: AppPool.fixture_adapter("ThreadedTestAdapter")
        }
      ]
    )

    log =
      capture_log([level: :debug], fn ->
        results =
          Task.async_stream(1..2, fn _ -> Snakepit.execute("interval", %{ms: 400}) end,
            timeout: 10_000
          )
          |> Enum.map(fn {:ok, {:ok, r}} -> r end)

        # They did overlap, in one process.
        [a, b] = Enum.sort_by(results, & &1["started"])
        assert a["pid"] == b["pid"] and b["started"] < a["finished"]
        [id] = Snakepit.list_workers()
        # The worker's stderr reaches the log; stop it to flush what it wrote.
        :ok = Snakepit.Pool.WorkerSupervisor.stop_worker_by_id(id)
      end)

    assert log =~ "thread safety check: tool 'interval' runs in 2 threads at once"
  end
end
