defmodule Snakepit.Error.Format do
  @moduledoc false
  # Shared rendering of devices, shapes and byte counts for error messages.

  @spec device(term()) :: String.t()
  def device(:cpu), do: "cpu"
  def device(:mps), do: "mps"
  def device(:cuda), do: "cuda"
  def device(:rocm), do: "rocm"
  def device({kind, id}) when kind in [:cuda, :rocm] and is_integer(id), do: "#{kind}:#{id}"
  def device(nil), do: "none"
  def device(other) when is_binary(other), do: other
  def device(other), do: inspect(other)

  @spec shape([integer()] | nil) :: String.t()
  def shape(nil), do: "unknown"
  def shape(dims) when is_list(dims), do: "[" <> Enum.map_join(dims, ", ", &to_string/1) <> "]"

  @units [{"GiB", 1024 * 1024 * 1024}, {"MiB", 1024 * 1024}, {"KiB", 1024}]

  @spec bytes(non_neg_integer()) :: String.t()
  def bytes(n) when is_integer(n) do
    case Enum.find(@units, fn {_unit, size} -> n >= size end) do
      {unit, size} -> :erlang.float_to_binary(n / size, decimals: 2) <> " " <> unit
      nil -> "#{n} B"
    end
  end
end
