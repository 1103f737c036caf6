# The decimal library is not a dependency (and hex is not reachable here):
# when it is absent, this stand-in with its struct shape and to_string/1
# lets the tests check that a %Decimal{} is sent as its string.
unless Code.ensure_loaded?(Decimal) do
  defmodule Decimal do
    @moduledoc false
    defstruct sign: 1, coef: 0, exp: 0

    def new(sign, coef, exp), do: %__MODULE__{sign: sign, coef: coef, exp: exp}

    def to_string(%__MODULE__{sign: sign, coef: coef, exp: exp}) do
      digits = Integer.to_string(coef) |> String.pad_leading(max(-exp + 1, 1), "0")
      {int, frac} = String.split_at(digits, String.length(digits) + min(exp, 0))
      body = if exp < 0, do: int <> "." <> frac, else: digits <> String.duplicate("0", exp)
      if sign < 0, do: "-" <> body, else: body
    end
  end
end
