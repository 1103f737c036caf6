defmodule Snakepit.Worker.LifecycleConfigTest do
  use ExUnit.Case, async: true

  alias Snakepit.Worker.LifecycleConfig

  doctest LifecycleConfig

  test "built from a normalized pool config and back into a replacement's worker config" do
    pool =
      Snakepit.Config.normalize_pool_config(%{
        name: :hpc,
        worker_profile: :thread,
        memory_threshold_mb: 512
      })

    lc = LifecycleConfig.ensure(:ignored, pool)
    assert %LifecycleConfig{pool_name: :hpc, profile_module: Snakepit.WorkerProfile.Thread} = lc
    assert lc.memory_threshold_mb == 512
    assert lc.worker_ttl_seconds == :infinity
    assert LifecycleConfig.ensure(:x, lc) == lc

    worker = LifecycleConfig.to_worker_config(lc, "hpc_worker_9")

    assert %{id: "hpc_worker_9", pool_name: :hpc, config: %{name: :hpc, worker_profile: :thread}} =
             worker

    # A worker config holding its pool config works too.
    assert %LifecycleConfig{pool_name: :hpc} =
             LifecycleConfig.ensure(:other, %{id: "w", config: pool})
  end
end
