defmodule Snakepit.Error.IndexError do
  @moduledoc """
  A Python `IndexError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "IndexError"
end
