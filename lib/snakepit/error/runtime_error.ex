defmodule Snakepit.Error.RuntimeError do
  @moduledoc """
  A Python `RuntimeError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "RuntimeError"
end
