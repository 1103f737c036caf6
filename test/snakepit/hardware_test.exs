defmodule Snakepit.HardwareTest do
  use ExUnit.Case, async: false

  alias Snakepit.Hardware

  setup do
    Hardware.clear_cache()
    :ok
  end

  test "this machine: detect, info and capabilities agree" do
    info = Hardware.detect()
    assert Hardware.info() == info
    assert info.cpu.threads >= 1 and info.cpu.cores >= 1
    assert info.platform =~ ~r/^[a-z0-9_]+-[a-z0-9_]+$/
    caps = Hardware.capabilities()
    assert caps.cuda == (info.cuda != nil)
    assert caps.avx2 == :avx2 in info.cpu.features
  end

  test "this machine: selection follows what was detected" do
    caps = Hardware.capabilities()

    if caps.cuda do
      assert Hardware.select(:cuda) == {:ok, {:cuda, 0}}
    else
      assert Hardware.select(:cuda) == {:error, :device_not_available}
    end

    {:ok, device} = Hardware.select_with_fallback([:cuda, :mps, :cpu])

    cond do
      caps.cuda -> assert device == {:cuda, 0}
      caps.mps -> assert device == :mps
      true -> assert device == :cpu
    end

    assert {:ok, _} = Hardware.select(:auto)
    assert %{type: :cpu, available: true} = Hardware.device_info(:cpu)
  end

  test "identity is a JSON-ready, string-keyed map" do
    identity = Hardware.identity()

    assert %{"platform" => _, "accelerator" => acc, "cpu_features" => features, "gpu_count" => n} =
             identity

    assert acc in ["cpu", "cuda", "mps", "rocm"]
    assert Enum.all?(features, &is_binary/1) and features == Enum.sort(features)
    assert is_integer(n) and n >= 0
    assert identity |> JSON.encode!() |> JSON.decode!() == identity
  end

  test "identity of a given hardware map" do
    info = %{
      accelerator: :cuda,
      platform: "linux-x86_64",
      cpu: %{features: [:avx2, :avx]},
      cuda: %{version: "12.2", devices: [%{id: 0}, %{id: 1}]},
      rocm: nil,
      mps: nil
    }

    assert Hardware.identity(info) == %{
             "platform" => "linux-x86_64",
             "accelerator" => "cuda",
             "cpu_features" => ["avx", "avx2"],
             "gpu_count" => 2,
             "cuda_version" => "12.2"
           }
  end

  test "clear_cache/0: detect/0 probes once, then answers from the cache until it is cleared" do
    parent = self()
    handler = "hw-cache-#{System.unique_integer()}"

    # Only this process's detections (handlers run in the emitting process).
    Snakepit.Telemetry.attach_many(
      handler,
      [[:snakepit, :hardware, :cache, :miss], [:snakepit, :hardware, :cache, :hit]],
      fn [_, _, _, kind], _, _, _ -> if self() == parent, do: send(parent, {:cache, kind}) end,
      nil
    )

    on_exit(fn -> Snakepit.Telemetry.detach(handler) end)

    first = Hardware.detect()
    assert Hardware.detect() == first
    assert Hardware.clear_cache() == :ok
    assert Hardware.detect() == first
    assert Hardware.detect() == first

    assert collect_cache_events() == [:miss, :hit, :miss, :hit]
  end

  defp collect_cache_events(acc \\ []) do
    receive do
      {:cache, kind} -> collect_cache_events([kind | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end
