defmodule Snakepit.Error.TypeError do
  @moduledoc """
  A Python `TypeError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "TypeError"
end
