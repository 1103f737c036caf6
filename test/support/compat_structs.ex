defmodule Snakepit.Test.Point do
  @moduledoc "A user struct that derives JSON.Encoder (only some fields)."
  @derive {JSON.Encoder, only: [:x, :y]}
  defstruct [:x, :y, :secret]
end

defmodule Snakepit.Test.Money do
  @moduledoc "A user struct with its own JSON.Encoder implementation."
  defstruct [:cents, :currency]

  defimpl JSON.Encoder do
    def encode(%{cents: cents, currency: currency}, encoder),
      do: JSON.Encoder.BitString.encode("#{cents / 100} #{currency}", encoder)
  end
end

defmodule Snakepit.Test.Opaque do
  @moduledoc "A struct with no JSON encoding."
  defstruct [:handle]
end
