defmodule Snakepit.Error.NotImplementedError do
  @moduledoc """
  A Python `NotImplementedError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "NotImplementedError"
end
