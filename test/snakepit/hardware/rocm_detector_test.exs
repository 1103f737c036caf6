defmodule Snakepit.Hardware.ROCmDetectorTest do
  use ExUnit.Case, async: true

  alias Snakepit.Hardware.ROCmDetector

  @fixtures Path.expand("../../fixtures/hardware", __DIR__)
  @mib 1024 * 1024

  defp fixture(name), do: File.read!(Path.join(@fixtures, name))

  defp detect(runner, opts \\ []) do
    ROCmDetector.detect(
      Keyword.merge(
        [rocm_smi: runner, rocm_version_paths: [Path.join(@fixtures, "rocm_version")]],
        opts
      )
    )
  end

  test "two MI210s behind a warning line" do
    test_pid = self()

    runner = fn args ->
      send(test_pid, {:args, args})
      {:ok, fixture("rocm_smi_mi210.json")}
    end

    assert %{version: "6.0.2", devices: [card0, card1]} = detect(runner)
    assert_received {:args, ["--showproductname", "--showmeminfo", "vram", "--json"]}

    assert card0 == %{
             id: 0,
             name: "AMD Instinct MI210",
             memory_total_mb: div(68_702_699_520, @mib),
             memory_free_mb: div(68_702_699_520 - 11_227_136, @mib)
           }

    assert card1.memory_free_mb == div(68_702_699_520 - 34_359_738_368, @mib)
  end

  test "other key spellings and non-card entries" do
    assert %{devices: [%{id: 0, name: "Radeon RX 6800 XT", memory_total_mb: 16_368}]} =
             detect(fn _ -> {:ok, fixture("rocm_smi_rx6800xt_series_key.json")} end)
  end

  test "version unknown without a version file" do
    assert %{version: "unknown"} =
             detect(fn _ -> {:ok, fixture("rocm_smi_mi210.json")} end,
               rocm_version_paths: ["/nonexistent"]
             )
  end

  test "missing, failing or garbled rocm-smi means no ROCm" do
    for runner <- [
          fn _ -> {:error, :not_found} end,
          fn _ -> {:error, {:exit_status, 2, "ERROR: GPU[0] : Unable to get vram"}} end,
          fn _ -> {:ok, "{not json"} end,
          fn _ -> {:ok, ~s({"system": {"Driver version": "6.14.14"}})} end,
          fn _ -> {:ok, "[1, 2, 3]"} end
        ] do
      assert detect(runner) == nil
    end
  end

  test "a hanging rocm-smi means no ROCm once the probe timeout passes; the probe is killed" do
    test_pid = self()

    hanging = fn _ ->
      send(test_pid, {:probe, self()})
      Process.sleep(:infinity)
    end

    task = Task.async(fn -> detect(hanging, probe_timeout_ms: 50) end)
    assert_receive {:probe, probe}, 30_000
    ref = Process.monitor(probe)
    # A generous limit: without the probe timeout it would never return.
    assert {:ok, nil} = Task.yield(task, 30_000) || Task.shutdown(task)
    assert_receive {:DOWN, ^ref, :process, ^probe, _}, 30_000
  end

  test "this machine: the default probe agrees with rocm-smi" do
    smi = System.find_executable("rocm-smi")

    listed? =
      smi != nil and
        match?({_, 0}, System.cmd(smi, ["--showproductname", "--json"], stderr_to_stdout: true))

    if listed? do
      assert %{devices: [_ | _]} = ROCmDetector.detect()
    else
      # No rocm-smi, or one that cannot list a GPU: no ROCm.
      assert ROCmDetector.detect() == nil
    end
  end
end
