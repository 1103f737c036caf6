defmodule Snakepit.Error.ValueError do
  @moduledoc """
  A Python `ValueError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "ValueError"
end
