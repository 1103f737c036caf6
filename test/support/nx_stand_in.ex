# Nx is a hex package (not reachable here): when it is absent, this stand-in
# with Nx.Tensor's shape and the five functions Snakepit.ZeroCopy calls
# (type/1, shape/1, to_binary/1, from_binary/2, reshape/2) lets the tests
# check that tensors go in with their own type and shape and come back as
# tensors.
unless Code.ensure_loaded?(Nx) do
  defmodule Nx.Tensor do
    @moduledoc false
    defstruct [:data, :type, :shape]
  end

  defmodule Nx do
    @moduledoc false

    def from_binary(binary, type),
      do: %Nx.Tensor{
        data: binary,
        type: type,
        shape: {(byte_size(binary) * 8) |> div(elem(type, 1))}
      }

    def reshape(%Nx.Tensor{} = t, shape), do: %{t | shape: shape}
    def to_binary(%Nx.Tensor{data: data}), do: data
    def type(%Nx.Tensor{type: type}), do: type
    def shape(%Nx.Tensor{shape: shape}), do: shape
  end
end
