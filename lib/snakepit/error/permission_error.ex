defmodule Snakepit.Error.PermissionError do
  @moduledoc """
  A Python `PermissionError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "PermissionError"
end
