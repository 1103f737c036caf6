defmodule Snakepit.ConfigTest do
  use ExUnit.Case, async: false

  alias Snakepit.Config

  doctest Snakepit.Config

  @keys [
    :pools,
    :pool_size,
    :adapter_args,
    :adapter_env,
    :pool_config,
    :affinity,
    :worker_profile,
    :heartbeat,
    :grpc_listener,
    :grpc_port,
    :grpc_host,
    :instance_name,
    :instance_token,
    :data_dir,
    :pool_startup_batch_size,
    :pool_max_workers,
    :min_workers,
    :max_workers,
    :scale_down_after_ms,
    :worker_env,
    :devices,
    :reload
  ]

  setup do
    Snakepit.Test.AppEnv.isolate(@keys)
  end

  describe "pools" do
    test "legacy keys describe one :default pool" do
      Application.put_env(:snakepit, :pool_size, 3)
      Application.put_env(:snakepit, :adapter_args, ["--adapter", "m.C"])
      Application.put_env(:snakepit, :affinity, :strict_queue)
      Application.put_env(:snakepit, :pool_config, %{startup_batch_size: 2})

      assert {:ok, [pool]} = Config.get_pool_configs()
      assert pool.name == :default
      assert pool.pool_size == 3
      assert pool.adapter_args == ["--adapter", "m.C"]
      assert pool.affinity == :strict_queue
      assert pool.startup_batch_size == 2
      assert pool.worker_profile == :process
      assert {:ok, ^pool} = Config.get_pool_config(:default)
      assert {:error, :pool_not_found} = Config.get_pool_config(:nope)
    end

    test "multi-pool configs are normalized with every documented key" do
      Application.put_env(:snakepit, :pools, [
        %{name: :default, pool_size: 2},
        [name: :compute, worker_profile: :thread, pool_size: 1, threads_per_worker: 4]
      ])

      assert {:ok, [default, compute]} = Config.get_pool_configs()
      assert compute.worker_profile == :thread
      assert compute.threads_per_worker == 4
      assert Config.thread_profile?(compute)
      refute Config.thread_profile?(default)
      assert Config.get_profile_module(compute) == Snakepit.WorkerProfile.Thread
      assert Config.get_profile_module(default) == Snakepit.WorkerProfile.Process

      for key <- [
            :name,
            :worker_profile,
            :pool_size,
            :adapter_module,
            :adapter_args,
            :adapter_env,
            :capacity_strategy,
            :affinity,
            :pool_identifier,
            :worker_ttl,
            :worker_max_requests,
            :heartbeat,
            :startup_batch_size,
            :startup_batch_delay_ms,
            :threads_per_worker,
            :thread_safety_checks
          ] do
        assert Map.has_key?(default, key), "missing #{key}"
      end

      assert default.startup_batch_size == 8
      assert default.startup_batch_delay_ms == 750
      assert default.heartbeat.ping_interval_ms == 2_000
    end

    test "the legacy global batch size applies when a pool sets none" do
      Application.put_env(:snakepit, :pool_startup_batch_size, 3)
      assert Config.normalize_pool_config(%{name: :x}).startup_batch_size == 3

      assert Config.normalize_pool_config(%{name: :x, startup_batch_size: 5}).startup_batch_size ==
               5
    end

    test "errors name the pool, the key and the value" do
      cases = [
        {%{name: :p, pool_size: 0}, "pool :p: pool_size must be a positive integer, got: 0"},
        {%{name: :p, worker_profile: :fork},
         "worker_profile must be one of [:process, :thread] (or a module implementing Snakepit.WorkerProfile), got: :fork"},
        {%{name: :p, affinity: :sticky}, "affinity must be one of"},
        {%{name: :p, adapter_args: "--adapter x"}, "adapter_args must be a list of strings"},
        {%{name: :p, adapter_env: [{"A", 1}]}, "adapter_env must be"},
        {%{name: :p, worker_ttl: {1, :days}}, "worker_ttl must be"},
        {%{name: :p, worker_max_requests: 0}, "worker_max_requests must be"},
        {%{name: :p, memory_threshold_mb: -1}, "memory_threshold_mb must be"},
        {%{name: :p, heartbeat: %{ping_interval_ms: 0}}, "heartbeat must be"},
        {%{name: :p, heartbeat: %{bogus: 1}}, "heartbeat must be"},
        {%{name: :p, queue_timeout: 0}, "queue_timeout must be"},
        {%{name: :p, pool_sise: 4}, "unknown key :pool_sise (value 4)"},
        {%{name: "p"}, "name must be an atom"}
      ]

      for {config, expected} <- cases do
        assert {:error, {:invalid_pool_config, message}} = Config.validate_pool_config(config)
        assert message =~ expected, "#{inspect(config)}: #{message}"
      end

      assert {:error, {:invalid_pool_config, _}} = Config.validate_pool_config(:nope)
    end

    test "pool_size is bounded by pool_max_workers" do
      Application.put_env(:snakepit, :pool_max_workers, 4)

      assert {:error, {:invalid_pool_config, message}} =
               Config.validate_pool_config(%{name: :big, pool_size: 5})

      assert message =~ "pool_size 5 exceeds pool_max_workers (4)"
    end

    test "a fixed pool is the range pool_size..pool_size; either bound makes it elastic" do
      assert {:ok, fixed} = Config.validate_pool_config(%{name: :f, pool_size: 3})
      assert {fixed.min_workers, fixed.max_workers, fixed.pool_size} == {3, 3, 3}
      refute Config.elastic?(fixed)

      assert {:ok, both} =
               Config.validate_pool_config(%{name: :e, min_workers: 2, max_workers: 6})

      # It starts at min_workers, which pool_size reports.
      assert {both.min_workers, both.max_workers, both.pool_size} == {2, 6, 2}
      assert both.scale_down_after_ms == 60_000
      assert Config.elastic?(both)

      assert {:ok, only_max} = Config.validate_pool_config(%{name: :e, max_workers: 4})
      assert {only_max.min_workers, only_max.max_workers, only_max.pool_size} == {1, 4, 1}

      assert {:ok, only_min} =
               Config.validate_pool_config(%{name: :e, min_workers: 2, pool_size: 5})

      assert {only_min.min_workers, only_min.max_workers, only_min.pool_size} == {2, 5, 2}

      # Normalizing twice changes nothing (workers normalize their config again).
      assert Config.normalize_pool_config(both) == both
    end

    test "the elastic keys work at the top level of a legacy configuration" do
      Application.put_env(:snakepit, :min_workers, 1)
      Application.put_env(:snakepit, :max_workers, 3)
      Application.put_env(:snakepit, :scale_down_after_ms, 500)
      Application.put_env(:snakepit, :devices, :per_worker)
      Application.put_env(:snakepit, :worker_env, {System, :get_env, []})
      Application.put_env(:snakepit, :reload, interval_ms: 200)

      assert {:ok, [pool]} = Config.get_pool_configs()
      assert {pool.min_workers, pool.max_workers, pool.scale_down_after_ms} == {1, 3, 500}
      assert pool.devices == :per_worker and pool.worker_env == {System, :get_env, []}
      assert pool.reload == [interval_ms: 200]
    end

    test "bad ranges and per-worker keys are refused with the key and the value" do
      Application.put_env(:snakepit, :pool_max_workers, 4)

      for {config, expected} <- [
            {%{min_workers: 3, max_workers: 2}, "min_workers 3 exceeds max_workers 2"},
            {%{max_workers: 5}, "max_workers 5 exceeds pool_max_workers (4)"},
            {%{min_workers: 0}, "min_workers must be a positive integer, got: 0"},
            {%{scale_down_after_ms: 0}, "scale_down_after_ms must be a positive integer (ms)"},
            {%{worker_env: fn -> %{} end}, "worker_env must be nil or {module, function, args}"},
            {%{devices: :all}, "devices must be nil or :per_worker, got: :all"},
            {%{reload: [interval_ms: 0]}, "reload must be a boolean or a keyword list"},
            {%{reload: [paths: ["a", :b]]}, "reload must be a boolean or a keyword list"}
          ] do
        assert {:error, {:invalid_pool_config, message}} =
                 Config.validate_pool_config(Map.put(config, :name, :p))

        assert message =~ expected
      end
    end

    test "duplicate and malformed pool lists are refused" do
      Application.put_env(:snakepit, :pools, [%{name: :a}, %{name: :a}])
      assert {:error, {:duplicate_pool, message}} = Config.get_pool_configs()
      assert message =~ ":a"

      Application.put_env(:snakepit, :pools, %{name: :a})
      assert {:error, {:invalid_pools, _}} = Config.get_pool_configs()
      Application.put_env(:snakepit, :pools, [])
      assert {:error, {:invalid_pools, _}} = Config.get_pool_configs()
    end

    test "adapter_env given as a map is normalized to pairs" do
      assert {:ok, pool} = Config.validate_pool_config(%{name: :e, adapter_env: %{"A" => "1"}})
      assert pool.adapter_env == [{"A", "1"}]
    end

    test "heartbeat defaults merge app config and pool overrides" do
      Application.put_env(:snakepit, :heartbeat, enabled: false, timeout_ms: 500)
      assert %{enabled: false, timeout_ms: 500, dependent: true} = Config.heartbeat_defaults()

      pool = Config.normalize_pool_config(%{name: :h, heartbeat: [dependent: false]})
      assert %{enabled: false, timeout_ms: 500, dependent: false} = pool.heartbeat
    end
  end

  describe "grpc listener" do
    test "internal by default: the bridge listens beside the workers" do
      assert {:ok, %{mode: :internal, port: 0}} = Config.grpc_listener_config()

      assert ["unix:/run/x/bridge.sock"] =
               Config.Listener.addresses(%{mode: :internal}, "/run/x/bridge.sock", nil)
    end

    test "external: one fixed TCP address, loopback unless allowed" do
      Application.put_env(:snakepit, :grpc_listener,
        mode: :external,
        host: "127.0.0.1",
        port: 50_051
      )

      assert {:ok, %{mode: :external, host: "127.0.0.1", port: 50_051} = l} =
               Config.grpc_listener_config()

      assert Config.Listener.addresses(l, "/unused", nil) == ["127.0.0.1:50051"]

      Application.put_env(:snakepit, :grpc_listener, mode: :external, host: "10.0.0.7", port: 1)
      assert {:error, {:invalid_grpc_listener, message}} = Config.grpc_listener_config()
      assert message =~ "not a loopback address"
    end

    test "legacy grpc_port means external on loopback" do
      Application.put_env(:snakepit, :grpc_port, 50_055)

      assert {:ok, %{mode: :external, port: 50_055, host: "127.0.0.1"}} =
               Config.grpc_listener_config()
    end

    test "bad listener configs name what is wrong; external_pool is refused with the reason" do
      for {listener, expected} <- [
            {[mode: :external, host: "127.0.0.1", port: 70_000],
             "port must be an integer in 0..65535"},
            {[mode: :external_pool, host: "h", base_port: 65_530, pool_size: 10],
             "not supported"},
            {[mode: :internal, port: 5], "takes no [:port]"},
            {[mode: :sideways], "mode must be"},
            {[host: "h"], "needs a mode"}
          ] do
        Application.put_env(:snakepit, :grpc_listener, listener)
        assert {:error, {:invalid_grpc_listener, message}} = Config.grpc_listener_config()
        assert message =~ expected
        assert_raise ArgumentError, fn -> Config.grpc_listener_config!() end
      end
    end
  end

  describe "instance" do
    test "name and token come from config, identifiers are CLI-safe" do
      Application.put_env(:snakepit, :instance_name, "my app/1")
      Application.put_env(:snakepit, :instance_token, "run a")
      assert Config.instance_name() == "my app/1"
      assert Config.instance_name_identifier() == "my_app_1"
      assert Config.instance_token() == "run a"
      assert Config.instance_token_identifier() == "run_a"
    end

    test "data_dir defaults to the user cache and follows config" do
      assert Config.data_dir() =~ "snakepit"
      Application.put_env(:snakepit, :data_dir, "/var/lib/snakepit")
      assert Config.data_dir() == "/var/lib/snakepit"
    end
  end
end
