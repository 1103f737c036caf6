defmodule Snakepit.ZeroCopyTest do
  # Real Python workers map the regions the real native core made, and the
  # other way round.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.{Error, ProcessKiller, ZeroCopy, ZeroCopyRef}
  alias Snakepit.Test.{AppPool, ExternalBeam}

  setup_all do
    start_pool!([])
  end

  defp start_pool!(extra) do
    AppPool.start!(
      [
        pool_size: 2,
        python_path: [AppPool.fixtures_dir()],
        adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter")
      ] ++ extra
    )
  end

  defp f32(values), do: for(v <- values, into: <<>>, do: <<v * 1.0::float-32-native>>)
  defp floats32(bin), do: for(<<v::float-32-native <- bin>>, do: v)
  defp files, do: File.ls!(ZeroCopy.stats().dir) |> Enum.sort()

  defp collect_all, do: Enum.each(Process.list(), &:erlang.garbage_collect/1)

  defp path_of(%ZeroCopyRef{ref: region}) do
    {_closed, path} = Snakepit.Native.zero_copy_region_info(region)
    path
  end

  describe "DLPack" do
    test "an Elixir array arrives in Python as a shared ndarray with its dtype, shape and contents" do
      values = Enum.map(0..999, &(&1 * 0.5))
      {:ok, ref} = ZeroCopy.to_dlpack(f32(values), dtype: :float32, shape: {10, 100})

      assert %ZeroCopyRef{kind: :dlpack, owner: :elixir, bytes: 4000, copy: false} = ref
      assert ref.dtype == :float32 and ref.shape == {10, 100} and ref.device == :cpu

      assert {:ok, %{"a" => seen}} = Snakepit.execute("describe", %{"a" => ref})
      assert seen["type"] == "ndarray" and seen["dtype"] == "float32"
      assert seen["shape"] == [10, 100]
      assert seen["sum"] == Enum.sum(values)
      # Over the region itself, writable (copy-on-write), and DLPack-capable.
      assert seen["shared"] and seen["writable"] and seen["dlpack"]
      assert :ok = ZeroCopy.close(ref)
    end

    test "an array a tool makes in shared memory comes back as a Python ref, read without copying" do
      {:ok, ref} = ZeroCopy.to_dlpack(f32(1..12), dtype: :float32, shape: [3, 4])
      {:ok, out} = Snakepit.execute("scale_array", %{"array" => ref, "factor" => 3})

      assert %ZeroCopyRef{kind: :dlpack, owner: :python, dtype: :float32, shape: {3, 4}} = out
      assert out.bytes == 48 and out.copy == false
      assert {:ok, bin} = ZeroCopy.from_dlpack(out)
      assert floats32(bin) == Enum.map(1..12, &(&1 * 3.0))
      # A resource binary: it outlives close/1.
      :ok = ZeroCopy.close(out)
      assert floats32(bin) == Enum.map(1..12, &(&1 * 3.0))
      assert {:ok, copied} = ZeroCopy.from_dlpack(ref, copy: true)
      assert copied == f32(1..12)
    end

    test "every element type survives a round trip, bytes unchanged" do
      for {dtype, bin, shape} <- [
            {:int8, <<1, 255, 3, 4>>, {2, 2}},
            {:uint16, <<1::16-native, 65_535::16-native>>, {2}},
            {:int64, <<-5::64-signed-native, 7::64-signed-native>>, {2, 1}},
            {:float64, <<1.5::float-64-native>>, {1}},
            {:bool, <<0, 1, 1>>, {3}},
            {:complex64, <<1.0::float-32-native, -2.0::float-32-native>>, {1}},
            {{:u, 32}, <<9::32-native>>, {1}}
          ] do
        {:ok, ref} = ZeroCopy.to_dlpack(bin, dtype: dtype, shape: shape)
        assert {:ok, back} = Snakepit.execute("echo_array", %{"array" => ref})
        assert back.owner == :python and back.dtype == ref.dtype and back.shape == shape
        assert {:ok, ^bin} = ZeroCopy.from_dlpack(back)
      end
    end

    test "a ref in a stream's arguments and refs in its chunks" do
      {:ok, ref} = ZeroCopy.to_dlpack(f32([1, 2, 3]), dtype: :float32)
      parent = self()

      :ok =
        Snakepit.execute_stream("stream_arrays", %{"count" => 3, "n" => 4, "seed" => ref}, fn
          %{"array" => %ZeroCopyRef{} = array, "i" => i, "seed_sum" => 6.0} ->
            send(parent, {:chunk, i, array})

          _ ->
            :ok
        end)

      for i <- 0..2 do
        assert_receive {:chunk, ^i, array}
        assert array.dtype == :float64 and array.shape == {4}
        {:ok, bin} = ZeroCopy.from_dlpack(array)
        assert for(<<v::float-64-native <- bin>>, do: v) == List.duplicate(i * 1.0, 4)
      end
    end
  end

  describe "Arrow" do
    test "a Python table round-trips through Elixir as Arrow IPC, and arrives as a pyarrow.Table" do
      {:ok, table} = Snakepit.execute("make_table", %{"rows" => 5})
      assert %ZeroCopyRef{kind: :arrow, owner: :python, dtype: nil} = table
      assert table.metadata == %{"num_rows" => 5, "num_columns" => 2}

      {:ok, ipc} = ZeroCopy.from_arrow(table)
      assert <<0xFF, 0xFF, 0xFF, 0xFF, _::binary>> = ipc
      {:ok, again} = ZeroCopy.to_arrow(ipc)

      assert {:ok, %{"t" => seen}} = Snakepit.execute("describe", %{"t" => again})
      assert seen["type"] == "table" and seen["columns"] == ["id", "value"]
      assert seen["rows"] == for(i <- 0..4, do: %{"id" => i, "value" => i / 2})

      assert {:ok, %{"num_rows" => 5, "sums" => %{"id" => 10, "value" => 5.0}}} =
               Snakepit.execute("table_stats", %{"table" => again})
    end

    test "to_arrow refuses bytes that are not Arrow IPC" do
      assert {:error, %Error{category: :validation, message: msg}} = ZeroCopy.to_arrow("hello")
      assert msg =~ "Arrow IPC"
    end
  end

  test "refs nested in maps and lists, both ways" do
    {:ok, a} = ZeroCopy.to_dlpack(f32([1, 2]), dtype: :float32)
    {:ok, b} = ZeroCopy.to_dlpack(<<7, 8, 9>>, dtype: :uint8)

    args = %{"outer" => %{"list" => [a, %{"deep" => b}, 3]}, "plain" => "x"}

    assert {:ok, %{"outer" => %{"list" => [da, %{"deep" => db}, "int"]}, "plain" => "str"}} =
             Snakepit.execute("describe", args)

    assert da["sum"] == 3.0 and db["sum"] == 24.0 and db["dtype"] == "uint8"

    assert {:ok, %{"arrays" => arrays, "inner" => %{"table" => table, "plain" => 4}}} =
             Snakepit.execute("nested_refs", %{"n" => 4})

    for {array, i} <- Enum.with_index(arrays) do
      {:ok, bin} = ZeroCopy.from_dlpack(array)
      assert for(<<v::32-signed-native <- bin>>, do: v) == Enum.map(0..3, &(&1 * i))
    end

    assert %ZeroCopyRef{kind: :arrow} = table
  end

  test "a ref used across a session's calls" do
    {:ok, ref} = ZeroCopy.to_dlpack(f32(1..4), dtype: :float32)
    sid = "zero-copy-#{System.unique_integer([:positive])}"

    for _ <- 1..3 do
      assert {:ok, %{"sum" => 10.0}} =
               Snakepit.execute_in_session(sid, "array_stats", %{"array" => ref})
    end

    {:ok, scaled} =
      Snakepit.execute_in_session(sid, "scale_array", %{"array" => ref, "factor" => 2})

    assert {:ok, %{"sum" => 20.0}} =
             Snakepit.execute_in_session(sid, "array_stats", %{"array" => scaled})
  end

  describe "lifetimes" do
    test "close/1 removes the region, is idempotent, and a closed ref is refused with a structured error" do
      {:ok, ref} = ZeroCopy.to_dlpack(f32([1]), dtype: :float32)
      path = path_of(ref)
      assert File.exists?(path)

      assert :ok = ZeroCopy.close(ref)
      refute File.exists?(path)
      assert :ok = ZeroCopy.close(ref)

      assert {:error, %Error{category: :validation, message: msg}} = ZeroCopy.from_dlpack(ref)
      assert msg =~ "closed"

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute("describe", %{"a" => [ref]})

      assert msg =~ "closed" and msg =~ ".a[0]"
    end

    test "refs of a process that dies are released with it" do
      parent = self()

      {pid, monitor} =
        spawn_monitor(fn ->
          {:ok, ref} = ZeroCopy.to_dlpack(f32(1..1000), dtype: :float32)
          {:ok, out} = Snakepit.execute("echo_array", %{"array" => ref})
          send(parent, {:paths, path_of(ref), path_of(out)})
        end)

      assert_receive {:paths, mine, from_python}, 10_000
      assert_receive {:DOWN, ^monitor, :process, ^pid, :normal}

      assert AppPool.wait_until(
               fn -> not File.exists?(mine) and not File.exists?(from_python) end,
               5_000
             ) != :timeout
    end

    test "a worker that dies while it holds a mapping: the call fails, the ref and the pool stay usable" do
      {:ok, ref} = ZeroCopy.to_dlpack(f32(List.duplicate(1, 100_000)), dtype: :float32)
      mark = Path.join(System.tmp_dir!(), "zc-crash-#{System.unique_integer([:positive])}")
      on_exit(fn -> File.rm(mark) end)

      assert {:error, %Error{category: :worker, details: %{reason: :worker_crash}}} =
               Snakepit.execute("crash_holding", %{"array" => ref, "path" => mark},
                 timeout: 20_000
               )

      assert File.read!(mark) =~ "holding"
      assert {:ok, bin} = ZeroCopy.from_dlpack(ref)
      assert byte_size(bin) == 400_000

      assert AppPool.wait_until(fn -> length(Snakepit.list_workers()) == 2 end, 30_000) !=
               :timeout

      assert {:ok, %{"sum" => sum}} = Snakepit.execute("array_stats", %{"array" => ref})
      assert sum == 100_000.0
      path = path_of(ref)
      :ok = ZeroCopy.close(ref)
      refute File.exists?(path)
    end

    test "200 create/use/close cycles leave the region directory and the live count as they were" do
      # Refs pass through the pool's processes too: collect them all.
      collect_all()
      before = {files(), ZeroCopy.stats().regions}

      for i <- 1..200 do
        {:ok, ref} = ZeroCopy.to_dlpack(f32([i]), dtype: :float32)
        {:ok, out} = Snakepit.execute("echo_array", %{"array" => ref})
        {:ok, <<_::binary>>} = ZeroCopy.from_dlpack(out)
        :ok = ZeroCopy.close(ref)
        :ok = ZeroCopy.close(out)
      end

      collect_all()
      assert {files(), ZeroCopy.stats().regions} == before
    end
  end

  describe "foreign refs" do
    test "a hand-built or decoded-elsewhere ref is refused, never a crash" do
      forged = %ZeroCopyRef{kind: :dlpack, ref: make_ref(), bytes: 4}

      assert {:error, %Error{category: :validation, message: msg}} = ZeroCopy.from_dlpack(forged)
      assert msg =~ "not a live zero-copy ref"
      assert {:error, %Error{category: :validation}} = ZeroCopy.close(forged)

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute("describe", %{"a" => forged})

      assert msg =~ "not a live region"
    end

    test "a :dlpack ref read as Arrow, and other bad input, get clear errors" do
      {:ok, ref} = ZeroCopy.to_dlpack(<<1, 2>>, dtype: :uint8)
      assert {:error, %Error{message: msg}} = ZeroCopy.from_arrow(ref)
      assert msg =~ "from_dlpack"
      assert {:error, %Error{message: msg}} = ZeroCopy.to_dlpack(<<1, 2, 3>>, dtype: :int16)
      assert msg =~ "whole number"
      assert {:error, %Error{message: msg}} = ZeroCopy.to_dlpack(<<1>>, dtype: :float8)
      assert msg =~ "unknown dtype"
      assert {:error, %Error{message: msg}} = ZeroCopy.to_dlpack(<<1>>, [])
      assert msg =~ "needs dtype"
      assert {:error, %Error{message: msg}} = ZeroCopy.to_dlpack([1, 2], dtype: :uint8)
      assert msg =~ "binary"

      assert {:error, %Error{message: msg}} =
               ZeroCopy.to_dlpack(<<1>>, dtype: :uint8, device: :mps)

      assert msg =~ "not supported"

      assert {:error, %Error{message: msg}} =
               ZeroCopy.to_dlpack(<<1>>, dtype: :uint8, shape: {-1})

      assert msg =~ "non-negative"
    end
  end

  describe "restarts and crashes of the VM" do
    test "a ref from before a restart of Snakepit cannot be sent, but its binary still reads" do
      {:ok, ref} = ZeroCopy.to_dlpack(f32([1, 2]), dtype: :float32)
      old_dir = ZeroCopy.stats().dir
      start_pool!([])

      refute ZeroCopy.stats().dir == old_dir
      refute File.exists?(old_dir)

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute("describe", %{"a" => ref})

      assert msg =~ "earlier start"
      assert {:ok, bin} = ZeroCopy.from_dlpack(ref)
      assert floats32(bin) == [1.0, 2.0]
    end

    @tag :tmp_dir
    test "kill -9 of a VM holding regions: the next start removes them", %{tmp_dir: base} do
      vm =
        ExternalBeam.start!(
          [
            pool_size: 1,
            python_path: [AppPool.fixtures_dir()],
            adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
            zero_copy: [dir: base]
          ],
          """
          {:ok, ref} = Snakepit.ZeroCopy.to_dlpack(<<1, 2, 3>>, dtype: :uint8)
          {:ok, out} = Snakepit.execute("echo_array", %{"array" => ref})
          :persistent_term.put(:zero_copy_test_refs, {ref, out})
          IO.puts("EXTRA " <> Snakepit.ZeroCopy.stats().dir)
          """
        )

      [dir] = vm.extra
      assert [_, _] = File.ls!(dir)
      :ok = ProcessKiller.kill_process(vm.os_pid, :sigkill)
      port = vm.port
      assert_receive {^port, {:exit_status, _}}, 10_000
      assert File.exists?(dir)

      start_pool!(zero_copy: [dir: base])
      refute File.exists?(dir)
      assert [mine] = File.ls!(base)
      assert Path.join(base, mine) == ZeroCopy.stats().dir
    end
  end

  describe "the copying fallback" do
    setup do
      start_pool!(zero_copy: [enabled: false])
    end

    test "refs hold their bytes, travel inline, and Python sees the same objects" do
      assert ZeroCopy.stats().dir == nil
      {:ok, ref} = ZeroCopy.to_dlpack(f32([1, 2, 3]), dtype: :float32)
      assert ref.copy == true

      assert {:ok, %{"a" => %{"type" => "ndarray", "sum" => 6.0, "shared" => false}}} =
               Snakepit.execute("describe", %{"a" => ref})

      assert {:ok, %ZeroCopyRef{copy: true, owner: :python} = out} =
               Snakepit.execute("scale_array", %{"array" => ref})

      assert {:ok, bin} = ZeroCopy.from_dlpack(out)
      assert floats32(bin) == [2.0, 4.0, 6.0]
      assert {:ok, %ZeroCopyRef{copy: true, kind: :arrow}} = Snakepit.execute("make_table", %{})
    end
  end

  describe "configuration" do
    test "max_bytes bounds a region" do
      start_pool!(zero_copy: [max_bytes: 16])
      assert {:ok, _} = ZeroCopy.to_dlpack(<<0::128>>, dtype: :uint8)

      assert {:error, %Error{category: :validation, message: msg}} =
               ZeroCopy.to_dlpack(<<0::136>>, dtype: :uint8)

      assert msg =~ "max_bytes (16)"
      # Workers keep to the same bound.
      assert {:error, %{message: msg}} = Snakepit.execute("make_table", %{"rows" => 1000})
      assert msg =~ "max_bytes (16)"
    end

    test "bad zero_copy settings name the key" do
      for {bad, words} <- [
            {[enabled: :yes], "enabled must be a boolean"},
            {[max_bytes: 0], "max_bytes must be"},
            {[nope: 1], "unknown keys [:nope]"},
            {:on, "keyword list or map"}
          ] do
        Application.put_env(:snakepit, :zero_copy, bad)
        assert {:error, message} = ZeroCopy.Directory.config()
        assert message =~ words
      end
    after
      Application.delete_env(:snakepit, :zero_copy)
    end
  end
end
