# Large payloads between Elixir and Python: bytes in the message
# (binary_parameters in, a bytes result out) beside zero-copy refs, in one
# run, one call at a time on a pool of 1 (process profile, the lane).
#
# * Elixir -> Python, bytes: Snakepit.execute("take_bytes", %{},
#   binary_parameters: %{"data" => bin}).
#   zero copy: to_dlpack(bin) (the one copy into shared memory), execute
#   ("take_array", %{"array" => ref}), close.
# * Python -> Elixir, bytes: execute("give_bytes") returns N MiB.
#   zero copy: execute("give_array") fills N MiB made in place with
#   zero_copy.empty (its memset is the one unavoidable write, timed in
#   Python as fill_us), from_dlpack (no copy), close.
#
# Both tools touch the payload's last byte. "beyond copy" is the zero-copy
# time minus its one copy (to_dlpack's time one way, the memset the other):
# the cost of the mechanism itself, which should not grow with size.
# Each figure is the median of BENCH_ROUNDS rounds, the two paths
# alternating. Then 200 create/use/close cycles, counting the VM's open
# descriptors and the region directory's files before and after.
#
#     MIX_ENV=prod mix run bench/zero_copy.exs
#     BENCH_SIZES_MIB=1,48,64,256,1024 BENCH_ROUNDS=5 ...
#
# Prints the figures and writes them to bench/results/zero_copy.txt.

Code.require_file("support/args.exs", __DIR__)

defmodule Bench.ZeroCopy do
  import Bench.Args, only: [env_ints: 2, median: 1]
  import Bitwise
  alias Snakepit.ZeroCopy

  def run do
    sizes = env_ints("BENCH_SIZES_MIB", [1, 48, 64, 256, 1024])
    rounds = env_ints("BENCH_ROUNDS", [5]) |> hd()
    start_pool()
    {load, _} = File.read!("/proc/loadavg") |> String.split() |> hd() |> Float.parse()

    trivial = trivial_ms(rounds)

    header = [
      "zero_copy  #{DateTime.utc_now() |> DateTime.truncate(:second)}  rounds=#{rounds} " <>
        "(medians; paths alternate)  cores=#{System.schedulers_online()}  load1=#{load}  " <>
        "max_message_bytes=#{Snakepit.Defaults.max_message_bytes()}  mix_env=#{Mix.env()}",
      "a call with a 1-byte ref (the floor under \"beyond copy\"): #{fmt(trivial)} ms",
      "",
      "direction          MiB   bytes ms   zero-copy ms   one copy ms   beyond copy ms   speed-up"
    ]

    Enum.each(header, &IO.puts/1)

    rows =
      for size <- sizes, direction <- [:to_python, :to_elixir] do
        row = measure(direction, size, rounds)
        IO.puts(row)
        row
      end

    cycles = cycles(200)
    IO.puts("")
    IO.puts(cycles)
    File.mkdir_p!("bench/results")

    File.write!(
      "bench/results/zero_copy.txt",
      Enum.join(header ++ rows ++ ["", cycles], "\n") <> "\n"
    )

    IO.puts("\nwritten to bench/results/zero_copy.txt")
  end

  defp start_pool do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :python_path, [Path.expand("bench")])

    Application.put_env(:snakepit, :pools, [
      %{name: :default, pool_size: 1, adapter_args: ["--adapter", "bench_adapters.ZeroCopyBench"]}
    ])

    {:ok, _} = Application.ensure_all_started(:snakepit)
    :ok = Snakepit.Pool.await_ready(Snakepit.Pool, 60_000)
  end

  defp measure(direction, mib, rounds) do
    bytes = mib <<< 20
    payload = if direction == :to_python, do: :binary.copy(<<7>>, bytes), else: nil
    # Warm-up: the worker's first mapping and the first large messages.
    bytes_path(direction, payload, mib)
    zero_copy_path(direction, payload, mib)

    samples =
      for _ <- 1..rounds do
        settle()
        b = bytes_path(direction, payload, mib)
        settle()
        z = zero_copy_path(direction, payload, mib)
        {b, z}
      end

    bytes_ms = samples |> Enum.map(&elem(&1, 0)) |> median_or_refused()
    zc = Enum.map(samples, &elem(&1, 1))
    total = median(Enum.map(zc, & &1.total))
    copy = median(Enum.map(zc, & &1.copy))
    beyond = median(Enum.map(zc, &(&1.total - &1.copy)))

    speedup = if is_number(bytes_ms), do: "#{fmt(bytes_ms / total)}x", else: "-"

    name = if direction == :to_python, do: "Elixir -> Python", else: "Python -> Elixir"

    "#{String.pad_trailing(name, 16)} #{pad(mib, 6)} #{pad(bytes_ms, 10)} #{pad(total, 14)} " <>
      "#{pad(copy, 13)} #{pad(beyond, 16)} #{pad(speedup, 10)}"
  end

  # ms, or :refused when the message would be over max_message_bytes.
  defp bytes_path(:to_python, payload, _mib) do
    timed(fn ->
      Snakepit.execute("take_bytes", %{},
        binary_parameters: %{"data" => payload},
        timeout: 600_000
      )
    end)
  end

  defp bytes_path(:to_elixir, _payload, mib) do
    timed(fn -> Snakepit.execute("give_bytes", %{"mb" => mib}, timeout: 600_000) end)
  end

  defp timed(fun) do
    started = System.monotonic_time(:microsecond)

    case fun.() do
      {:ok, _} ->
        (System.monotonic_time(:microsecond) - started) / 1000

      {:error, %{message: message}} ->
        if message =~ "max_message_bytes", do: :refused, else: raise(message)
    end
  end

  defp zero_copy_path(:to_python, payload, _mib) do
    started = System.monotonic_time(:microsecond)
    {:ok, ref} = ZeroCopy.to_dlpack(payload, dtype: :uint8)
    copied = System.monotonic_time(:microsecond)

    {:ok, %{"n" => n, "last" => 7}} =
      Snakepit.execute("take_array", %{"array" => ref}, timeout: 600_000)

    true = n == byte_size(payload)
    :ok = ZeroCopy.close(ref)
    done = System.monotonic_time(:microsecond)
    %{total: (done - started) / 1000, copy: (copied - started) / 1000}
  end

  defp zero_copy_path(:to_elixir, _payload, mib) do
    started = System.monotonic_time(:microsecond)

    {:ok, %{"array" => ref, "fill_us" => fill_us}} =
      Snakepit.execute("give_array", %{"mb" => mib}, timeout: 600_000)

    {:ok, bin} = ZeroCopy.from_dlpack(ref)
    true = byte_size(bin) == mib <<< 20 and :binary.last(bin) == 7
    :ok = ZeroCopy.close(ref)
    done = System.monotonic_time(:microsecond)
    %{total: (done - started) / 1000, copy: fill_us / 1000}
  end

  # Garbage of the previous sample (large binaries, regions whose memory
  # is being returned) is collected before the next one is timed.
  defp settle do
    collect_all()
    {:ok, ref} = ZeroCopy.to_dlpack(<<1>>, dtype: :uint8)
    {:ok, _} = Snakepit.execute("take_array", %{"array" => ref})
    :ok = ZeroCopy.close(ref)
  end

  # A whole zero-copy round trip of one byte: the floor under "beyond copy".
  defp trivial_ms(rounds) do
    samples =
      for _ <- 1..(rounds * 4) do
        {:ok, ref} = ZeroCopy.to_dlpack(<<1>>, dtype: :uint8)
        started = System.monotonic_time(:microsecond)
        {:ok, _} = Snakepit.execute("take_array", %{"array" => ref})
        (System.monotonic_time(:microsecond) - started) / 1000
      end

    median(samples)
  end

  defp cycles(n) do
    collect_all()
    before = {open_fds(), region_files(), shm_entries()}

    for i <- 1..n do
      {:ok, ref} = ZeroCopy.to_dlpack(:binary.copy(<<i::8>>, 4096), dtype: :uint8)
      {:ok, %{"n" => 4096}} = Snakepit.execute("take_array", %{"array" => ref})
      {:ok, %{"array" => out}} = Snakepit.execute("give_array", %{"mb" => 1})
      {:ok, _} = ZeroCopy.from_dlpack(out)
      :ok = ZeroCopy.close(ref)
      :ok = ZeroCopy.close(out)
    end

    collect_all()
    after_ = {open_fds(), region_files(), shm_entries()}
    {fds0, files0, shm0} = before
    {fds1, files1, shm1} = after_

    "#{n} create/use/close cycles (both directions): VM open descriptors #{fds0} -> #{fds1}, " <>
      "shared regions #{files0} -> #{files1}, /dev/shm entries #{shm0} -> #{shm1}, live regions " <>
      "#{ZeroCopy.stats().regions}"
  end

  defp collect_all, do: Enum.each(Process.list(), &:erlang.garbage_collect/1)
  defp open_fds, do: length(File.ls!("/proc/self/fd"))
  defp region_files, do: ZeroCopy.stats().shared
  defp shm_entries, do: length(File.ls!("/dev/shm"))

  defp median_or_refused(values) do
    if Enum.any?(values, &(&1 == :refused)), do: "refused", else: median(values)
  end

  defp fmt(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 2)
  defp fmt(x), do: to_string(x)
  defp pad(x, n), do: String.pad_leading(fmt(x), n)
end

Bench.ZeroCopy.run()
