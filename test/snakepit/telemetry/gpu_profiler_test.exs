defmodule Snakepit.Telemetry.GPUProfilerTest do
  # nvidia-smi stands in as fixtures: the machine running the tests has no GPU.
  use ExUnit.Case, async: false

  alias Snakepit.Telemetry.GPUProfiler

  @fixtures Path.expand("../../fixtures/hardware", __DIR__)
  @events Snakepit.Telemetry.Events.gpu_profiler_events()

  defp fixture(name), do: File.read!(Path.join(@fixtures, name))

  # Answers the profiler's query with `reply`; anything else is a bug.
  defp smi(reply) do
    fn ["--query-gpu=" <> _fields, "--format=csv,noheader,nounits"] -> reply end
  end

  defp start(reply, opts \\ []) do
    opts = Keyword.merge([name: nil, enabled: false, nvidia_smi: smi(reply)], opts)
    start_supervised!({GPUProfiler, opts}, id: make_ref())
  end

  setup do
    me = self()
    id = make_ref()

    :ok =
      Snakepit.Telemetry.attach_many(
        id,
        @events,
        fn event, measurements, metadata, _ ->
          send(me, {:event, event, measurements, metadata})
        end,
        nil
      )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
  end

  test "parses each GPU row; values a GPU does not report are nil; other lines are skipped" do
    assert [
             %{index: 0, name: "NVIDIA GeForce RTX 4090", memory_used_mb: 579, watts: 21.37},
             %{index: 1, memory_free_mb: 1203, gpu_percent: 97, memory_percent: 64, celsius: 71}
           ] = GPUProfiler.parse(fixture("nvidia_smi_sample_2x4090.csv"))

    assert [%{index: 0, gpu_percent: nil, memory_percent: nil, watts: nil, celsius: 31}] =
             GPUProfiler.parse(fixture("nvidia_smi_sample_h100_na.csv"))

    assert GPUProfiler.parse(fixture("nvidia_smi_no_driver.txt")) == []
    assert GPUProfiler.parse("") == []
  end

  test "a sample emits memory, utilization, temperature and power per GPU" do
    server = start({:ok, fixture("nvidia_smi_sample_2x4090.csv")})
    assert :ok = GPUProfiler.sample_now(server)

    assert_receive {:event, [:snakepit, :gpu, :memory, :sampled],
                    %{used_mb: 579, total_mb: 24_564, free_mb: 23_985},
                    %{device: {:cuda, 0}, name: "NVIDIA GeForce RTX 4090"}}

    assert_receive {:event, [:snakepit, :gpu, :memory, :sampled], %{used_mb: 23_361},
                    %{device: {:cuda, 1}}}

    assert_receive {:event, [:snakepit, :gpu, :utilization, :sampled],
                    %{gpu_percent: 97, memory_percent: 64}, %{device: {:cuda, 1}}}

    assert_receive {:event, [:snakepit, :gpu, :temperature, :sampled], %{celsius: 34},
                    %{device: {:cuda, 0}}}

    assert_receive {:event, [:snakepit, :gpu, :power, :sampled], %{watts: 412.5},
                    %{device: {:cuda, 1}}}

    assert %{sample_count: 1, devices: [cuda: 0, cuda: 1], error_count: 0, last_sample_time: t} =
             GPUProfiler.get_stats(server)

    assert is_integer(t)
  end

  test "what a GPU does not report is left out, and so is an event with nothing in it" do
    server = start({:ok, fixture("nvidia_smi_sample_h100_na.csv")})
    assert :ok = GPUProfiler.sample_now(server)
    assert_receive {:event, [:snakepit, :gpu, :memory, :sampled], %{total_mb: 81_559}, _}
    assert_receive {:event, [:snakepit, :gpu, :temperature, :sampled], %{celsius: 31}, _}
    refute_receive {:event, [:snakepit, :gpu, :power, :sampled], _, _}, 50
    refute_received {:event, [:snakepit, :gpu, :utilization, :sampled], _, _}
  end

  test "without nvidia-smi or a driver there is no GPU: an error, no events" do
    for reply <- [{:error, :enoent}, {:ok, fixture("nvidia_smi_no_driver.txt")}] do
      server = start(reply)
      assert {:error, :no_gpu} = GPUProfiler.sample_now(server)
      assert %{sample_count: 0, error_count: 1, devices: []} = GPUProfiler.get_stats(server)
    end

    refute_receive {:event, _, _, _}, 50
  end

  test "samples every interval while enabled; disable, enable and set_interval" do
    server =
      start({:ok, fixture("nvidia_smi_sample_h100_na.csv")}, enabled: true, interval_ms: 20)

    memory = [:snakepit, :gpu, :memory, :sampled]

    assert_receive {:event, ^memory, _, _}, 1_000
    assert_receive {:event, ^memory, _, _}, 1_000

    assert :ok = GPUProfiler.disable(server)
    flush()
    refute_receive {:event, ^memory, _, _}, 100
    assert %{enabled: false} = GPUProfiler.get_stats(server)

    assert :ok = GPUProfiler.enable(server)
    assert_receive {:event, ^memory, _, _}, 1_000

    assert {:error, :invalid_interval} = GPUProfiler.set_interval(server, 0)
    assert {:error, :invalid_interval} = GPUProfiler.set_interval(server, :often)
    assert :ok = GPUProfiler.set_interval(server, 60_000)
    assert %{interval_ms: 60_000, enabled: true} = GPUProfiler.get_stats(server)
    flush()
    refute_receive {:event, ^memory, _, _}, 100
  end

  test "the default name, and bad options refused by start_link" do
    start_supervised!({GPUProfiler, enabled: false, nvidia_smi: smi({:error, :enoent})})
    assert {:error, :no_gpu} = GPUProfiler.sample_now()
    assert :ok = GPUProfiler.set_interval(1_000)
    assert %{interval_ms: 1_000} = GPUProfiler.get_stats()

    assert {:error, {:invalid_interval, 0}} = GPUProfiler.start_link(name: nil, interval_ms: 0)

    assert {:error, {:invalid_option, :enabled, 1}} =
             GPUProfiler.start_link(name: nil, enabled: 1)

    assert {:error, {:invalid_option, _}} = GPUProfiler.start_link(name: nil, nvidia_smi: :x)
  end

  test "calls to a profiler that is not running are errors" do
    assert {:error, :not_running} = GPUProfiler.sample_now(:no_such_profiler)
    assert {:error, :not_running} = GPUProfiler.get_stats(:no_such_profiler)
    assert {:error, :not_running} = GPUProfiler.enable(:no_such_profiler)
  end

  defp flush do
    receive do
      {:event, _, _, _} -> flush()
    after
      30 -> :ok
    end
  end
end
