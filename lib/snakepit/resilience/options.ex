defmodule Snakepit.Resilience.Options do
  @moduledoc false
  # Option checks the resilience state modules share: a bad option raises
  # in the process that starts the breaker or monitor, naming it.

  @spec pos_int!(keyword(), atom(), pos_integer()) :: pos_integer()
  def pos_int!(opts, key, default) do
    case Keyword.get(opts, key, default) do
      value when is_integer(value) and value > 0 ->
        value

      other ->
        raise ArgumentError,
              "invalid #{inspect(key)} option: expected a positive integer, got: #{inspect(other)}"
    end
  end
end
