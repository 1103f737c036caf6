defmodule Snakepit.Error.PythonException do
  @moduledoc """
  A Python exception with no struct of its own (anything but the builtins
  that have one, such as `Snakepit.Error.ValueError`); `python_type` names
  its class. Fields: see `Snakepit.Error.PythonErrorStruct`.
  """
  use Snakepit.Error.PythonErrorStruct, python_type: "Exception"
end
