# Arrays and Arrow tables between Elixir and Python through shared memory.
#
#     mix run examples/zero_copy.exs
#
# Uses the bundled ShowcaseAdapter's array_stats, scale_array, make_table and
# table_stats tools (NumPy and pyarrow in the workers' environment).

defmodule ZeroCopyExample do
  alias Snakepit.ZeroCopy

  def run do
    :ok = Snakepit.Pool.await_init_complete()
    before = shared_after_gc()
    use_refs()
    # Closed refs no process references are released at garbage collection
    # (a process that still holds a reply may let go of it a moment later).
    IO.puts("shared regions left after close/1: #{settled(before, 20)}")
  end

  defp settled(before, tries) do
    case shared_after_gc() - before do
      left when left > 0 and tries > 0 ->
        Process.sleep(50)
        settled(before, tries - 1)

      left ->
        left
    end
  end

  defp shared_after_gc do
    Enum.each(Process.list(), &:erlang.garbage_collect/1)
    ZeroCopy.stats().shared
  end

  defp use_refs do
    # 1M float32 values (4 MiB), written once into shared memory.
    values = for i <- 1..1_000_000, into: <<>>, do: <<i / 1_000_000::float-32-native>>
    {:ok, ref} = ZeroCopy.to_dlpack(values, dtype: :float32, shape: {1000, 1000})
    IO.puts("made       #{inspect(ref)}")

    {:ok, stats} = Snakepit.execute("array_stats", %{"array" => ref})
    IO.puts("in Python  #{inspect(stats)}")

    # A tool fills an array it allocated in shared memory and hands it back.
    {:ok, scaled} = Snakepit.execute("scale_array", %{"array" => ref, "factor" => 10})
    {:ok, bin} = ZeroCopy.from_dlpack(scaled)
    <<first::float-32-native, _::binary>> = bin
    IO.puts("returned   #{inspect(scaled)}, first element #{Float.round(first, 6)}")

    # Arrow: a table made in Python, read in Elixir as IPC bytes, sent back.
    {:ok, table} = Snakepit.execute("make_table", %{"rows" => 1000})
    {:ok, ipc} = ZeroCopy.from_arrow(table)
    IO.puts("table      #{inspect(table)}, #{byte_size(ipc)} bytes of Arrow IPC")
    {:ok, again} = ZeroCopy.to_arrow(ipc)
    IO.puts("table back #{inspect(Snakepit.execute("table_stats", %{"table" => again}))}")

    Enum.each([ref, scaled, table, again], &ZeroCopy.close/1)
  end
end

ZeroCopyExample.run()
