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

  test "missing, failing, hanging or garbled rocm-smi means no ROCm" do
    for runner <- [
          fn _ -> {:error, :not_found} end,
          fn _ -> {:error, {:exit_status, 2, "ERROR: GPU[0] : Unable to get vram"}} end,
          fn _ -> {:ok, "{not json"} end,
          fn _ -> {:ok, ~s({"system": {"Driver version": "6.14.14"}})} end,
          fn _ -> {:ok, "[1, 2, 3]"} end,
          fn _ -> Process.sleep(:infinity) end
        ] do
      {micros, result} = :timer.tc(fn -> detect(runner, probe_timeout_ms: 50) end)
      assert result == nil
      assert micros < 2_000_000
    end
  end

  test "this machine: the default probe answers" do
    result = ROCmDetector.detect()
    assert result == nil or match?(%{devices: [_ | _]}, result)
  end
end
