defmodule Snakepit.Error.ImportError do
  @moduledoc """
  A Python `ImportError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "ImportError"
end
