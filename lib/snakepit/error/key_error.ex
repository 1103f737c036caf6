defmodule Snakepit.Error.KeyError do
  @moduledoc """
  A Python `KeyError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "KeyError"
end
