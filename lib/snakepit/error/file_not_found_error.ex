defmodule Snakepit.Error.FileNotFoundError do
  @moduledoc """
  A Python `FileNotFoundError` raised by a tool, translated by
  `Snakepit.Error.PythonTranslation`. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "FileNotFoundError"
end
