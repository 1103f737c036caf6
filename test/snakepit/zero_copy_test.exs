defmodule Snakepit.ZeroCopyTest do
  # Real Python workers map the regions the real native core made, and the
  # other way round.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.{Error, ProcessKiller, ZeroCopy, ZeroCopyRef}
  alias Snakepit.Test.{AppPool, ExternalBeam}

  # Every size shares memory here (small refs would copy by default), so
  # small test arrays exercise the shared path.
  @shared [inline_below: 0]

  setup_all do
    start_pool!([])
  end

  # Tests that start the pool with other settings leave them behind: each
  # test begins on the module's own settings.
  setup do
    if Application.get_env(:snakepit, :zero_copy) != @shared, do: start_pool!([])
    :ok
  end

  defp start_pool!(extra) do
    AppPool.start!(
      Keyword.merge(
        [
          pool_size: 2,
          python_path: [AppPool.fixtures_dir()],
          adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
          zero_copy: @shared
        ],
        extra
      )
    )
  end

  defp f32(values), do: for(v <- values, into: <<>>, do: <<v * 1.0::float-32-native>>)
  defp floats32(bin), do: for(<<v::float-32-native <- bin>>, do: v)
  defp vm_holds?(inode), do: holds?("/proc/#{System.pid()}/fd/*", inode)

  # The VM's descriptors of region memory files.
  defp memfds do
    dir = "/proc/#{System.pid()}/fd"

    dir
    |> File.ls!()
    |> Enum.count(fn fd ->
      match?({:ok, "/memfd:snakepit-" <> _}, File.read_link(Path.join(dir, fd)))
    end)
  end

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
    test "close/1 releases the region, is idempotent, and a closed ref is refused with a structured error" do
      {:ok, ref} = ZeroCopy.to_dlpack(f32([1]), dtype: :float32)
      path = path_of(ref)
      assert {:ok, "/memfd:snakepit-dlpack" <> _} = File.read_link(path)

      assert :ok = ZeroCopy.close(ref)
      assert path_of(ref) == nil
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
          send(parent, {:inodes, Enum.map([ref, out], &File.stat!(path_of(&1)).inode), out.owner})
          # Both stay referenced until the test says so (a ref no longer
          # referenced may be collected, and its region closed, at any GC).
          receive do: (:exit -> {ref, out})
        end)

      assert_receive {:inodes, inodes, :python}, 10_000
      assert Enum.all?(inodes, &vm_holds?/1)
      send(pid, :exit)
      assert_receive {:DOWN, ^monitor, :process, ^pid, :normal}

      assert AppPool.wait_until(
               fn ->
                 collect_all()
                 not Enum.any?(inodes, &vm_holds?/1)
               end,
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
      :ok = ZeroCopy.close(ref)
      assert path_of(ref) == nil
    end

    test "200 create/use/close cycles leave the VM's memory files and the live count as they were" do
      # Refs pass through the pool's processes too: collect them all.
      collect_all()
      before = {memfds(), ZeroCopy.stats().regions}

      for i <- 1..200 do
        {:ok, ref} = ZeroCopy.to_dlpack(f32([i]), dtype: :float32)
        {:ok, out} = Snakepit.execute("echo_array", %{"array" => ref})
        {:ok, <<_::binary>>} = ZeroCopy.from_dlpack(out)
        :ok = ZeroCopy.close(ref)
        :ok = ZeroCopy.close(out)
      end

      collect_all()
      assert {memfds(), ZeroCopy.stats().regions} == before
      # And the workers keep no region the VM has taken over.
      for _ <- 1..4 do
        assert {:ok, %{"pending" => 0}} = Snakepit.execute("zero_copy_state", %{})
      end
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
      start_pool!([])

      assert {:error, %Error{category: :validation, message: msg}} =
               Snakepit.execute("describe", %{"a" => ref})

      assert msg =~ "earlier start"
      assert {:ok, bin} = ZeroCopy.from_dlpack(ref)
      assert floats32(bin) == [1.0, 2.0]
    end

    test "kill -9 of a VM holding regions: no process holds their memory afterwards" do
      vm =
        ExternalBeam.start!(
          [
            pool_size: 1,
            python_path: [AppPool.fixtures_dir()],
            adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
            zero_copy: [inline_below: 0]
          ],
          """
          {:ok, ref} = Snakepit.ZeroCopy.to_dlpack(<<1, 2, 3>>, dtype: :uint8)
          {:ok, out} = Snakepit.execute("echo_array", %{"array" => ref})
          :persistent_term.put(:zero_copy_test_refs, {ref, out})
          inodes =
            for r <- [ref, out] do
              {_closed, path} = Snakepit.Native.zero_copy_region_info(r.ref)
              File.stat!(path).inode
            end
          IO.puts("EXTRA " <> Enum.join(inodes, ","))
          """
        )

      [line] = vm.extra
      inodes = line |> String.split(",") |> Enum.map(&String.to_integer/1)
      assert [_, _] = Enum.filter(inodes, &held_by_any_process?/1)
      :ok = ProcessKiller.kill_process(vm.os_pid, :sigkill)
      port = vm.port
      assert_receive {^port, {:exit_status, _}}, 10_000

      # Its worker goes too (the guard), and with the last holder the memory.
      assert AppPool.wait_until(fn -> not Enum.any?(inodes, &held_by_any_process?/1) end, 10_000) !=
               :timeout
    end
  end

  defp held_by_any_process?(inode), do: holds?("/proc/[0-9]*/fd/*", inode)

  defp holds?(pattern, inode) do
    Path.wildcard(pattern)
    |> Enum.any?(fn fd ->
      match?({:ok, "/memfd:snakepit-" <> _}, File.read_link(fd)) and
        match?({:ok, %{inode: ^inode}}, File.stat(fd))
    end)
  end

  describe "a worker that attacks regions" do
    # Each attempt a same-user process can make on memory the VM has mapped;
    # every one that changes a size must be refused by the seals.
    @resizes ["truncate", "ftruncate_shrink", "ftruncate_grow", "fallocate_punch"]
    # One session: both calls reach the worker that exported the region.
    @attacker "zero-copy-attacker"

    test "cannot shrink, grow or rewrite a region Elixir made, and the VM reads it whole" do
      data = :binary.copy(<<1, 2, 3, 4>>, 65_536)
      {:ok, ref} = ZeroCopy.to_dlpack(data, dtype: :uint8)
      {:ok, bin} = ZeroCopy.from_dlpack(ref)

      assert {:ok, %{"attempts" => attempts}} =
               Snakepit.execute("attack_region", %{"path" => path_of(ref)})

      for what <- @resizes ++ ["write"] do
        assert attempts[what] =~ "refused", "#{what}: #{attempts[what]}"
      end

      # Reading every page: a truncated mapping would kill the VM here.
      assert :erlang.md5(bin) == :erlang.md5(data)
      assert {:ok, %{"sum" => _}} = Snakepit.execute("array_stats", %{"array" => ref})
    end

    test "cannot shrink a region it handed over, and the VM reads it whole" do
      assert {:ok, %ZeroCopyRef{owner: :python, bytes: 262_144} = out} =
               Snakepit.execute_in_session(@attacker, "export_and_keep", %{})

      {:ok, bin} = ZeroCopy.from_dlpack(out)

      assert {:ok, %{"attempts" => attempts}} =
               Snakepit.execute_in_session(@attacker, "attack_exported", %{})

      for what <- @resizes, do: assert(attempts[what] =~ "refused", "#{what}: #{attempts[what]}")
      # Every page still reads (its first byte the attack could rewrite:
      # a region made by empty() is writable by its maker, never resizable).
      assert byte_size(bin) == 262_144
      assert binary_part(bin, 1, 262_143) == :binary.copy(<<7>>, 262_143)
    end

    test "forged markers are refused for that call, and the pool keeps serving" do
      {:ok, mine} = ZeroCopy.to_dlpack(:binary.copy(<<9>>, 65_536), dtype: :uint8)
      assert AppPool.await_workers(2) != :timeout
      workers = AppPool.worker_os_pids()

      for {how, path, words} <- [
            {"path", path_of(mine), "not a worker of this VM"},
            {"path", "/proc/1/fd/0", "not a worker of this VM"},
            {"path", "/etc/passwd", "not /proc/<pid>/fd/<n>"},
            {"path", "/proc/self/fd/0", "not /proc/<pid>/fd/<n>"},
            {"unsealed", "", "not a memory file sealed"},
            {"grow_only", "", "not a memory file sealed"},
            {"wrong_size", "", "marker says 131072"},
            {"wrong_ino", "", "not the region named"},
            {"huge_inline", "", "holds more"},
            {"no_data", "", "neither a path nor inline"}
          ] do
        # A bad ref in the reply is refused (:validation), not a broken worker.
        assert {:error, %Error{category: :validation, message: msg}} =
                 Snakepit.execute("forge_marker", %{"how" => how, "path" => path}),
               how

        assert msg =~ "bad zero-copy ref" and msg =~ words, "#{how}: #{msg}"
      end

      assert AppPool.worker_os_pids() == workers
      # The Elixir region named by the first forgery is untouched.
      assert {:ok, bin} = ZeroCopy.from_dlpack(mine)
      assert bin == :binary.copy(<<9>>, 65_536)
      assert path_of(mine) != nil
    end
  end

  describe "live-region limit" do
    test "shared refs past max_live_regions are refused with :resource_exhausted, never an abort" do
      start_pool!(zero_copy: [inline_below: 0, max_live_regions: 4])
      collect_all()
      base = ZeroCopy.stats().shared
      assert ZeroCopy.stats().shared_limit == 4

      refs =
        for i <- Range.new(1, 4 - base, 1) do
          {:ok, ref} = ZeroCopy.to_dlpack(<<i::64>>, dtype: :uint8)
          ref
        end

      assert {:error, %Error{category: :validation, details: details, message: msg}} =
               ZeroCopy.to_dlpack(<<0::64>>, dtype: :uint8)

      assert details.reason == :resource_exhausted and details.limit == 4
      assert msg =~ "max_live_regions"

      # A reply carrying a region past the limit fails that call alone.
      assert {:error, %Error{message: msg}} = Snakepit.execute("make_table", %{"rows" => 3})
      assert msg =~ "max_live_regions"

      # Released refs make room again.
      Enum.each(refs, &ZeroCopy.close/1)
      refs = nil
      collect_all()
      assert refs == nil
      assert {:ok, %ZeroCopyRef{copy: false}} = ZeroCopy.to_dlpack(<<1::64>>, dtype: :uint8)
    after
      start_pool!([])
    end

    test "70,000 small live refs need no shared memory and leave the VM well" do
      start_pool!(zero_copy: [inline_below: 65_536])

      refs = for i <- 1..70_000, do: elem(ZeroCopy.to_dlpack(<<i::128>>, dtype: :uint8), 1)

      assert Enum.all?(refs, &match?(%ZeroCopyRef{copy: true}, &1))
      assert ZeroCopy.stats().regions >= 70_000

      assert {:ok, %{"sum" => sum}} =
               Snakepit.execute("array_stats", %{"array" => List.last(refs)})

      assert sum == Enum.sum(:binary.bin_to_list(<<70_000::128>>))
      # A large ref still shares memory.
      assert {:ok, %ZeroCopyRef{copy: false}} =
               ZeroCopy.to_dlpack(:binary.copy(<<0>>, 65_536), dtype: :uint8)
    after
      start_pool!([])
    end
  end

  describe "Nx tensors" do
    # With Nx loaded (a stand-in here: test/support/nx_stand_in.ex).
    test "a tensor goes in with its own type and shape, and comes back as a tensor" do
      tensor = Nx.reshape(Nx.from_binary(f32(1..6), {:f, 32}), {2, 3})

      assert {:ok, %ZeroCopyRef{dtype: :float32, shape: {2, 3}} = ref} =
               ZeroCopy.to_dlpack(tensor)

      assert {:ok, %{"a" => %{"shape" => [2, 3], "sum" => 21.0}}} =
               Snakepit.execute("describe", %{"a" => ref})

      {:ok, out} = Snakepit.execute("scale_array", %{"array" => ref, "factor" => 2})

      assert {:ok, %Nx.Tensor{type: {:f, 32}, shape: {2, 3}} = back} =
               ZeroCopy.from_dlpack(out, as: :tensor)

      assert floats32(Nx.to_binary(back)) == Enum.map(1..6, &(&1 * 2.0))
      # The binary form stays the default.
      assert {:ok, bin} = ZeroCopy.from_dlpack(out)
      assert is_binary(bin)
      # Options still win over the tensor's own description.
      assert {:ok, %ZeroCopyRef{shape: {6}}} = ZeroCopy.to_dlpack(tensor, shape: {6})
      assert {:error, %Error{category: :validation}} = ZeroCopy.from_dlpack(out, as: :nope)
    end
  end

  describe "the copying fallback" do
    setup do
      start_pool!(zero_copy: [enabled: false])
    end

    test "refs hold their bytes, travel inline, and Python sees the same objects" do
      assert ZeroCopy.stats().enabled == false
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
            {[max_live_regions: 0], "max_live_regions must be"},
            {[inline_below: -1], "inline_below must be"},
            {[nope: 1], "unknown keys [:nope]"},
            {:on, "keyword list or map"}
          ] do
        Application.put_env(:snakepit, :zero_copy, bad)
        assert {:error, message} = ZeroCopy.Settings.config()
        assert message =~ words
      end
    after
      Application.delete_env(:snakepit, :zero_copy)
    end
  end
end
