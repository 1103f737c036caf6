# Hardware detection for ML workloads.
#
#     mix run examples/hardware_detection.exs
#
# Prints what Snakepit finds on this machine: CPU, accelerators, the device
# it would pick, and the identity map you would store in a lock file.
# Needs no Python workers and no GPU.

alias Snakepit.Hardware

yes_no = fn
  true -> "yes"
  false -> "no"
end

{micros, info} = :timer.tc(fn -> Hardware.detect() end)
cpu = info.cpu

IO.puts("== Hardware (detected in #{div(micros, 1000)} ms) ==")
IO.puts("platform:      #{info.platform}")
IO.puts("accelerator:   #{info.accelerator}")
IO.puts("cpu model:     #{cpu.model}")
IO.puts("cores/threads: #{cpu.cores} cores, #{cpu.threads} threads")
IO.puts("memory:        #{cpu.memory_total_mb} MB")
IO.puts("cpu features:  #{Enum.join(cpu.features, " ")}")

IO.puts("\n== Accelerators ==")

case info.cuda do
  nil ->
    IO.puts("CUDA:  not available")

  cuda ->
    IO.puts(
      "CUDA:  #{cuda.version} (driver #{cuda.driver_version}, cuDNN #{cuda.cudnn_version || "not found"})"
    )

    for d <- cuda.devices do
      IO.puts(
        "  [#{d.id}] #{d.name}: #{d.memory_free_mb}/#{d.memory_total_mb} MB free, compute #{d.compute_capability || "?"}"
      )
    end
end

case info.rocm do
  nil ->
    IO.puts("ROCm:  not available")

  rocm ->
    IO.puts(
      "ROCm:  #{rocm.version}, #{length(rocm.devices)} device(s): #{Enum.map_join(rocm.devices, ", ", & &1.name)}"
    )
end

case info.mps do
  nil ->
    IO.puts("MPS:   not available (not macOS)")

  mps ->
    IO.puts(
      "MPS:   #{if mps.available, do: "available", else: "not available"} on #{mps.device_name}"
    )
end

IO.puts("\n== Capabilities ==")

Hardware.capabilities()
|> Enum.sort()
|> Enum.each(fn
  {key, value} when is_boolean(value) -> IO.puts("  #{key}: #{yes_no.(value)}")
  {key, value} -> IO.puts("  #{key}: #{value || "-"}")
end)

IO.puts("\n== Device selection ==")

for preference <- [:auto, :cpu, :cuda, {:cuda, 1}, :mps, :rocm] do
  IO.puts("  select(#{inspect(preference)}) -> #{inspect(Hardware.select(preference))}")
end

chain = [:cuda, :mps, :cpu]
{:ok, device} = Hardware.select_with_fallback(chain)
IO.puts("  select_with_fallback(#{inspect(chain)}) -> #{inspect({:ok, device})}")

IO.puts(
  "  select_with_fallback([:cuda, :rocm]) -> #{inspect(Hardware.select_with_fallback([:cuda, :rocm]))}"
)

IO.puts(
  "  device_info(#{inspect(device)}) -> #{inspect(Map.drop(Hardware.device_info(device), [:features]))}"
)

IO.puts("\n== Identity for lock files ==")
IO.puts(JSON.encode!(Hardware.identity()))

IO.puts("\n== Python side ==")

case Snakepit.PythonVersion.detect() do
  {:ok, {major, minor, micro} = version} ->
    IO.puts("python:              #{major}.#{minor}.#{micro}")

    IO.puts(
      "free threading:      #{yes_no.(Snakepit.PythonVersion.supports_free_threading?(version))}"
    )

    IO.puts("recommended profile: #{Snakepit.PythonVersion.recommend_profile()}")

  {:error, error} ->
    IO.puts("python:              #{Exception.message(error)}")
end

IO.puts("thread limits:       #{inspect(Snakepit.PythonThreadLimits.defaults())}")
