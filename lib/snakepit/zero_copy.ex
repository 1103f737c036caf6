defmodule Snakepit.ZeroCopy do
  @moduledoc """
  Large arrays and tables between Elixir and Python through shared memory.

      {:ok, ref} = Snakepit.ZeroCopy.to_dlpack(pixels, dtype: :uint8, shape: {480, 640, 3})
      {:ok, %{"mean" => mean}} = Snakepit.execute("image_stats", %{"image" => ref})
      :ok = Snakepit.ZeroCopy.close(ref)

  `to_dlpack/2` and `to_arrow/2` copy the bytes once into a region of
  shared memory and return a `%Snakepit.ZeroCopyRef{}`. A ref may appear
  anywhere in the arguments of `Snakepit.execute/3`, `execute_stream/4` and
  the session variants; only the region's name travels, and the worker
  receives a NumPy array (`:dlpack`) or a `pyarrow.Table` (`:arrow`) over
  the same memory. A tool that returns `snakepit_bridge.zero_copy.export(...)`
  hands back a ref with `owner: :python`; `from_dlpack/2` and
  `from_arrow/2` give its bytes as a binary backed by the region itself
  (no copy), valid for as long as the binary is referenced, after
  `close/1` too.

  ## Lifetimes

  `close/1` releases a ref (a second `close/1` is a no-op). A ref that no
  process references any more is released when it is garbage collected, so
  the refs of a process that dies go with it. Regions are anonymous memory
  files: nothing is ever written to disk, and whatever way a VM or a
  worker dies, the memory goes with the last process that held it. Refs
  made before Snakepit was restarted can no longer be sent.

  ## Safety and limits

  A region is sealed against shrinking and growing before anyone maps it
  (`memfd` seals), so no worker, however it misbehaves, can truncate
  memory the VM has mapped (which would kill the VM with a bus error).
  Regions the VM makes are sealed against writes too. The VM takes over a
  region from a worker's reply only if it is such a sealed memory file
  held by one of its own workers, of exactly the size its marker states
  and within `max_bytes`; anything else fails that call with an error.

  Refs under `inline_below` bytes (64 KiB) hold their bytes on the heap
  and need no shared memory, so any number of them can be alive. Larger
  ones each hold a descriptor and a mapping; past `max_live_regions`
  alive at once, `to_dlpack/2` and `to_arrow/2` return
  `{:error, %Snakepit.Error{category: :validation, details: %{reason:
  :resource_exhausted}}}` (and a reply carrying more fails that call),
  well before the kernel's limits.

  ## Errors

  Every function returns `{:error, %Snakepit.Error{category: :validation}}`
  for bad input: a closed ref, something that is not a live ref of this
  Snakepit (built by hand, from another VM, or from before a restart of
  the application), a dtype or shape that does not fit the bytes, a
  device other than `:cpu` (GPU memory is not supported yet), a payload
  over `zero_copy: [max_bytes: ...]`, options that are not a keyword list,
  a `shape` of more than 64 dimensions or with a dimension outside
  `0..2^63-1`, or `copy:` that is not a boolean. No function raises on bad
  input. Sending a closed or foreign ref in a
  call fails the same way, before anything is sent.

  ## Copying fallback

  With `zero_copy: [enabled: false]`, and for refs under `inline_below`
  bytes, refs hold their bytes on the heap (`copy: true`) and the bytes
  travel inside the call's message (base64), within `max_message_bytes`.
  Python tools see the same objects either way.

  See `Snakepit.ZeroCopy.Settings` for the configuration.
  """

  alias Snakepit.{Error, Native, ZeroCopyRef}
  alias Snakepit.ZeroCopy.Settings

  @typedoc "Options of `to_dlpack/2` and `to_arrow/2`."
  @type export_opts :: [
          device: ZeroCopyRef.device(),
          dtype: atom() | String.t(),
          shape: tuple() | list(),
          owner: :elixir | :python
        ]

  # Element types and their Nx-style types (which give their sizes); also
  # accepted as dtypes: those `{:f, 32}` tuples and `:f32`-style names.
  @typed [
    float16: {:f, 16},
    bfloat16: {:bf, 16},
    float32: {:f, 32},
    float64: {:f, 64},
    int8: {:s, 8},
    int16: {:s, 16},
    int32: {:s, 32},
    int64: {:s, 64},
    uint8: {:u, 8},
    uint16: {:u, 16},
    uint32: {:u, 32},
    uint64: {:u, 64},
    complex64: {:c, 64},
    complex128: {:c, 128}
  ]
  @dtypes @typed |> Map.new(fn {name, {_, bits}} -> {name, div(bits, 8)} end) |> Map.put(:bool, 1)
  @short Map.new(@typed, fn {name, type} -> {type, name} end)
  @short_names Map.new(@short, fn {{t, bits}, name} -> {:"#{t}#{bits}", name} end)
  # DLPack's shape is int64_t[ndim]; NumPy allows 64 dimensions.
  @max_dim 9_223_372_036_854_775_807
  @max_dims 64

  @doc """
  A `:dlpack` ref to a dense array: `binary` holds its elements packed in
  row-major order (e.g. `Nx.to_binary/1`).

  Options: `dtype:` (required; `:float32`, `"float32"`, `:f32` or
  `{:f, 32}`, and likewise for the other types in `dtypes/0`), `shape:` (a
  tuple or list; default one dimension over the whole binary), `device:`
  (`:cpu`, the default; `:cuda` and `:mps` are refused for now).
  """
  @spec to_dlpack(binary() | struct(), export_opts()) ::
          {:ok, ZeroCopyRef.t()} | {:error, Error.t()}
  def to_dlpack(binary, opts \\ [])

  # An Nx tensor (when the host app has Nx): its own type and shape, its
  # bytes brought to the host.
  def to_dlpack(%{__struct__: Nx.Tensor} = tensor, opts) when is_list(opts) do
    if nx?() do
      opts =
        opts
        |> Keyword.put_new(:dtype, apply(Nx, :type, [tensor]))
        |> Keyword.put_new(:shape, apply(Nx, :shape, [tensor]))

      to_dlpack(apply(Nx, :to_binary, [tensor]), opts)
    else
      invalid("to_dlpack/2 got an Nx tensor, but Nx is not loaded")
    end
  end

  def to_dlpack(binary, opts) when is_binary(binary) and is_list(opts) do
    with :ok <- check_opts(opts, "to_dlpack/2"),
         :ok <- check_owner(opts),
         :ok <- check_device(Keyword.get(opts, :device, :cpu)),
         {:ok, dtype} <- dtype(Keyword.fetch(opts, :dtype)),
         {:ok, shape} <- shape(Keyword.get(opts, :shape), byte_size(binary), dtype),
         :ok <- check_size(binary) do
      create(:dlpack, binary, Atom.to_string(dtype), shape)
    end
  end

  def to_dlpack(other, _opts),
    do:
      invalid(
        "to_dlpack/2 takes a binary of packed elements (e.g. Nx.to_binary/1) and a keyword " <>
          "list, got: #{describe(other)}"
      )

  @doc """
  An `:arrow` ref to an Arrow IPC stream (or IPC file) in `binary`, e.g.
  what `Explorer.DataFrame.dump_ipc_stream!/1` writes. The worker reads it
  as a `pyarrow.Table` without copying.
  """
  @spec to_arrow(binary(), export_opts()) :: {:ok, ZeroCopyRef.t()} | {:error, Error.t()}
  def to_arrow(binary, opts \\ [])

  def to_arrow(binary, opts) when is_binary(binary) and is_list(opts) do
    with :ok <- check_opts(opts, "to_arrow/2"),
         :ok <- check_owner(opts),
         :ok <- check_device(Keyword.get(opts, :device, :cpu)),
         :ok <- check_arrow(binary),
         :ok <- check_size(binary) do
      create(:arrow, binary, nil, nil)
    end
  end

  def to_arrow(other, _opts),
    do: invalid("to_arrow/2 takes an Arrow IPC binary, got: #{describe(other)}")

  @doc """
  The bytes of a `:dlpack` ref as a binary backed by its region (no copy;
  `copy: true` makes an ordinary copy instead). With `as: :tensor` (when
  the host app has Nx), an `Nx.Tensor` of the ref's dtype and shape over
  those bytes (`as: :binary` is the default).
  """
  @spec from_dlpack(ZeroCopyRef.t(), keyword()) ::
          {:ok, binary() | struct()} | {:error, Error.t()}
  def from_dlpack(ref, opts \\ []) do
    case Keyword.keyword?(opts) && Keyword.get(opts, :as, :binary) do
      :tensor -> to_tensor(ref, Keyword.delete(opts, :as))
      :binary -> read(ref, :dlpack, Keyword.delete(opts, :as))
      false -> read(ref, :dlpack, opts)
      other -> invalid("as must be :binary or :tensor, got: #{describe(other)}")
    end
  end

  defp to_tensor(ref, opts) do
    with {:ok, binary} <- read(ref, :dlpack, opts) do
      case {nx?(), nx_type(ref.dtype)} do
        {false, _} ->
          invalid("from_dlpack/2 with as: :tensor needs Nx, which is not loaded")

        {true, nil} ->
          invalid("this ref's dtype #{inspect(ref.dtype)} has no Nx type")

        {true, type} ->
          shape = ref.shape || {div(byte_size(binary), Map.fetch!(@dtypes, ref.dtype))}
          tensor = apply(Nx, :from_binary, [binary, type])
          {:ok, apply(Nx, :reshape, [tensor, shape])}
      end
    end
  end

  # Nx's type for a dtype (Nx keeps booleans as u8).
  defp nx_type(:bool), do: {:u, 8}
  defp nx_type(dtype) when is_atom(dtype), do: Keyword.get(@typed, dtype)
  defp nx_type(_dtype), do: nil

  defp nx?, do: Code.ensure_loaded?(Nx) and function_exported?(Nx, :from_binary, 2)

  @doc "The Arrow IPC bytes of an `:arrow` ref, like `from_dlpack/2`."
  @spec from_arrow(ZeroCopyRef.t(), keyword()) :: {:ok, binary()} | {:error, Error.t()}
  def from_arrow(ref, opts \\ []), do: read(ref, :arrow, opts)

  @doc "Releases a ref. Idempotent; binaries made from it stay valid."
  @spec close(ZeroCopyRef.t()) :: :ok | {:error, Error.t()}
  def close(%ZeroCopyRef{ref: region} = ref) do
    native(ref, fn -> Native.zero_copy_close(region) end)
  end

  def close(other),
    do: invalid("close/1 takes a %Snakepit.ZeroCopyRef{}, got: #{describe(other)}")

  @doc "The element types `to_dlpack/2` knows, with their sizes in bytes."
  @spec dtypes() :: %{atom() => pos_integer()}
  def dtypes, do: @dtypes

  @doc """
  Regions alive in this VM: `:regions` and their `:bytes` (closed refs
  still referenced count, their memory is still held), how many of them
  are in shared memory (`:shared`) and the most allowed at once
  (`:shared_limit`), and whether zero copy is on (`:enabled`).
  """
  @spec stats() :: %{
          regions: non_neg_integer(),
          bytes: non_neg_integer(),
          shared: non_neg_integer(),
          shared_limit: non_neg_integer(),
          enabled: boolean()
        }
  def stats do
    {regions, bytes, shared, limit} = Native.zero_copy_live()

    %{
      regions: regions,
      bytes: bytes,
      shared: shared,
      shared_limit: limit,
      enabled: Settings.enabled?()
    }
  end

  # -- internals -------------------------------------------------------------

  defp create(kind, binary, dtype, shape) do
    case Native.zero_copy_create(kind, binary, dtype, shape) do
      # Refs this process dropped but has not collected yet still hold
      # their shared memory: collect once, then try again.
      {:error, {:resource_exhausted, _}} ->
        :erlang.garbage_collect()
        created(Native.zero_copy_create(kind, binary, dtype, shape), kind)

      other ->
        created(other, kind)
    end
  end

  defp created({:ok, %ZeroCopyRef{}} = ok, _kind), do: ok

  defp created({:error, {native_kind, _} = reason}, kind) do
    details = %{zero_copy: kind, reason: native_kind, limit: Settings.live_limit()}
    {:error, Error.Native.to_error(reason, nil, details)}
  end

  defp read(%ZeroCopyRef{kind: kind, ref: region} = ref, kind, opts) do
    with :ok <- check_read_opts(opts, kind), do: read_region(ref, region, opts)
  end

  defp read(%ZeroCopyRef{kind: other}, kind, _opts),
    do: invalid("a #{inspect(other)} ref cannot be read as #{inspect(kind)}; use from_#{other}/2")

  defp read(other, kind, _opts),
    do: invalid("from_#{kind}/2 takes a %Snakepit.ZeroCopyRef{}, got: #{describe(other)}")

  defp read_region(ref, region, opts) do
    native(ref, fn ->
      case Native.zero_copy_binary(region) do
        {:ok, binary} ->
          if Keyword.get(opts, :copy, false), do: {:ok, :binary.copy(binary)}, else: {:ok, binary}

        {:error, reason} ->
          {:error, Error.Native.to_error(reason, nil, %{zero_copy: ref.kind})}
      end
    end)
  end

  # Options are a keyword list; of those read here, `copy:` is a boolean.
  defp check_read_opts(opts, kind) do
    with :ok <- check_opts(opts, "from_#{kind}/2") do
      case Keyword.get(opts, :copy, false) do
        copy when is_boolean(copy) -> :ok
        other -> invalid("copy must be true or false, got: #{describe(other)}")
      end
    end
  end

  defp check_opts(opts, function) do
    if is_list(opts) and Keyword.keyword?(opts),
      do: :ok,
      else: invalid("#{function} takes a keyword list of options, got: #{describe(opts)}")
  end

  # A ref whose `ref` is not a region resource (built by hand, or decoded
  # from another VM's term) makes the NIF raise ArgumentError.
  defp native(ref, fun) do
    fun.()
  rescue
    ArgumentError ->
      invalid(
        "#{inspect(ref)} is not a live zero-copy ref of this Snakepit (made by another " <>
          "instance, or built by hand)"
      )
  end

  defp check_owner(opts) do
    case Keyword.get(opts, :owner, :elixir) do
      :elixir -> :ok
      other -> invalid("refs made in Elixir are owned by :elixir, got owner: #{inspect(other)}")
    end
  end

  defp check_device(:cpu), do: :ok

  defp check_device(device) when device in [:cuda, :mps],
    do:
      invalid(
        "device #{inspect(device)} is not supported: zero-copy refs hold host memory only; " <>
          "copy the tensor to the CPU first (device: :cpu)"
      )

  defp check_device(other),
    do: invalid("device must be :cpu, :cuda or :mps, got: #{inspect(other)}")

  defp dtype(:error),
    do: invalid("to_dlpack/2 needs dtype: (one of #{inspect(Map.keys(@dtypes))})")

  defp dtype({:ok, dtype}) when is_map_key(@dtypes, dtype), do: {:ok, dtype}
  defp dtype({:ok, dtype}) when is_map_key(@short, dtype), do: {:ok, Map.fetch!(@short, dtype)}

  defp dtype({:ok, dtype}) when is_map_key(@short_names, dtype),
    do: {:ok, Map.fetch!(@short_names, dtype)}

  defp dtype({:ok, dtype}) when is_binary(dtype) do
    case Enum.find(Map.keys(@dtypes), &(Atom.to_string(&1) == dtype)) do
      nil -> dtype({:ok, :unknown})
      known -> {:ok, known}
    end
  end

  defp dtype({:ok, other}),
    do: invalid("unknown dtype #{inspect(other)}; expected one of #{inspect(Map.keys(@dtypes))}")

  defp shape(nil, bytes, dtype) do
    size = Map.fetch!(@dtypes, dtype)

    if rem(bytes, size) == 0,
      do: {:ok, [div(bytes, size)]},
      else: invalid("#{bytes} bytes are not a whole number of #{dtype} elements (#{size} bytes)")
  end

  defp shape(shape, bytes, dtype) when is_tuple(shape),
    do: shape(Tuple.to_list(shape), bytes, dtype)

  defp shape(shape, _bytes, _dtype) when is_list(shape) and length(shape) > @max_dims,
    do: invalid("shape has #{length(shape)} dimensions, more than #{@max_dims}")

  defp shape(shape, bytes, dtype) when is_list(shape) do
    if proper_list?(shape) and Enum.all?(shape, &(is_integer(&1) and &1 >= 0 and &1 <= @max_dim)) do
      expected = Enum.reduce(shape, 1, &(&1 * &2)) * Map.fetch!(@dtypes, dtype)

      if expected == bytes,
        do: {:ok, shape},
        else:
          invalid(
            "shape #{inspect(List.to_tuple(shape))} of #{dtype} is #{expected} bytes, " <>
              "the binary is #{bytes}"
          )
    else
      invalid(
        "shape must hold non-negative integers up to #{@max_dim}, got: " <>
          inspect(shape, limit: 10)
      )
    end
  end

  defp shape(other, _bytes, _dtype),
    do: invalid("shape must be a tuple or list of integers, got: #{inspect(other)}")

  defp proper_list?([]), do: true
  defp proper_list?([_ | rest]), do: proper_list?(rest)
  defp proper_list?(_), do: false

  # An IPC stream starts with a message (continuation marker 0xFFFFFFFF, or
  # a bare length before Arrow 0.15); an IPC file with "ARROW1".
  defp check_arrow(<<"ARROW1", _::binary>>), do: :ok
  defp check_arrow(<<0xFF, 0xFF, 0xFF, 0xFF, _::binary>>), do: :ok

  defp check_arrow(_),
    do: invalid("to_arrow/2 takes Arrow IPC stream or file bytes; this binary is neither")

  defp check_size(binary) do
    case Settings.max_bytes() do
      max when is_integer(max) and byte_size(binary) > max ->
        invalid("#{byte_size(binary)} bytes is more than zero_copy max_bytes (#{max})")

      _ ->
        :ok
    end
  end

  defp describe(term), do: inspect(term, limit: 5, printable_limit: 40)

  defp invalid(message), do: {:error, Error.validation_error(message)}
end
