defmodule Snakepit.Error.AttributeError do
  @moduledoc """
  A Python `AttributeError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "AttributeError"
end
