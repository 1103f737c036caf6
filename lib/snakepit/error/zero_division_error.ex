defmodule Snakepit.Error.ZeroDivisionError do
  @moduledoc """
  A Python `ZeroDivisionError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "ZeroDivisionError"
end
