defmodule Snakepit.Cluster.Transfer do
  @moduledoc false
  # Zero-copy refs name memory on one machine: across nodes they travel as
  # their bytes and are made anew (shared memory again) on the other side.

  alias Snakepit.{ZeroCopy, ZeroCopyRef}

  @tag :__snakepit_region__

  @doc "Refs in `term` replaced by their bytes and description."
  def to_portable(%ZeroCopyRef{} = ref) do
    bytes =
      case ref.kind do
        :dlpack -> ZeroCopy.from_dlpack(ref, copy: true)
        :arrow -> ZeroCopy.from_arrow(ref, copy: true)
      end

    case bytes do
      {:ok, binary} ->
        {@tag, ref.kind, binary, ref.dtype, ref.shape}

      {:error, error} ->
        raise ArgumentError,
              "a zero-copy ref cannot be sent to another node: #{Exception.message(error)}"
    end
  end

  def to_portable(%_{} = struct), do: struct
  def to_portable(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, to_portable(v)} end)
  def to_portable(list) when is_list(list), do: Enum.map(list, &to_portable/1)
  def to_portable({:ok, value}), do: {:ok, to_portable(value)}
  def to_portable(other), do: other

  @doc "The other way: bytes back into refs of this node."
  def into_local({@tag, :dlpack, binary, dtype, shape}) do
    {:ok, ref} = ZeroCopy.to_dlpack(binary, dtype: dtype, shape: shape)
    ref
  end

  def into_local({@tag, :arrow, binary, _dtype, _shape}) do
    {:ok, ref} = ZeroCopy.to_arrow(binary)
    ref
  end

  def into_local(%_{} = struct), do: struct
  def into_local(map) when is_map(map), do: Map.new(map, fn {k, v} -> {k, into_local(v)} end)
  def into_local(list) when is_list(list), do: Enum.map(list, &into_local/1)
  def into_local({:ok, value}), do: {:ok, into_local(value)}
  def into_local(other), do: other
end
