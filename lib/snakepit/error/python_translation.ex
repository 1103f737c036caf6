defmodule Snakepit.Error.PythonTranslation do
  @moduledoc """
  Turns a Python exception reported by a worker (class name, message,
  traceback) into a pattern-matchable exception struct:

      case Snakepit.execute("error_demo", %{error_type: "value"}) do
        {:error, %Snakepit.Error.ValueError{message: message}} -> ...
        {:error, %Snakepit.Error.PythonException{python_type: type}} -> ...
      end

  | Python class | struct |
  |---|---|
  | `ValueError` (and `UnicodeDecodeError`, `UnicodeEncodeError`, `JSONDecodeError`) | `Snakepit.Error.ValueError` |
  | `TypeError` | `Snakepit.Error.TypeError` |
  | `KeyError` | `Snakepit.Error.KeyError` |
  | `IndexError` | `Snakepit.Error.IndexError` |
  | `AttributeError` | `Snakepit.Error.AttributeError` |
  | `ImportError` (and `ModuleNotFoundError`) | `Snakepit.Error.ImportError` |
  | `FileNotFoundError` | `Snakepit.Error.FileNotFoundError` |
  | `PermissionError` | `Snakepit.Error.PermissionError` |
  | `RuntimeError` (and `RecursionError`) | `Snakepit.Error.RuntimeError` |
  | `NotImplementedError` | `Snakepit.Error.NotImplementedError` |
  | `ZeroDivisionError` | `Snakepit.Error.ZeroDivisionError` |
  | anything else | `Snakepit.Error.PythonException` |

  Only the class name travels over the wire, not its ancestry, so the
  builtin subclasses in parentheses are mapped by name; `python_type`
  always keeps the real class name.

  Errors of workers go through `from_tool_error/4`, which first lets
  `Snakepit.Error.MLErrors` recognise the ML families it knows (out of memory,
  tensors on different devices, shape mismatches: `Snakepit.Error.OutOfMemory`,
  `Snakepit.Error.DeviceMismatch`, `Snakepit.Error.ShapeMismatch`), whatever
  the Python class, and uses the table above for everything else.
  """

  alias Snakepit.Error

  @modules %{
    "ValueError" => Error.ValueError,
    "UnicodeDecodeError" => Error.ValueError,
    "UnicodeEncodeError" => Error.ValueError,
    "JSONDecodeError" => Error.ValueError,
    "TypeError" => Error.TypeError,
    "KeyError" => Error.KeyError,
    "IndexError" => Error.IndexError,
    "AttributeError" => Error.AttributeError,
    "ImportError" => Error.ImportError,
    "ModuleNotFoundError" => Error.ImportError,
    "FileNotFoundError" => Error.FileNotFoundError,
    "PermissionError" => Error.PermissionError,
    "RuntimeError" => Error.RuntimeError,
    "RecursionError" => Error.RuntimeError,
    "NotImplementedError" => Error.NotImplementedError,
    "ZeroDivisionError" => Error.ZeroDivisionError
  }

  @doc "The struct module for the Python class `python_type`."
  @spec exception_module(String.t()) :: module()
  def exception_module(python_type), do: Map.get(@modules, python_type, Error.PythonException)

  @doc """
  The error for an exception a worker reported: an ML-specific struct when
  `Snakepit.Error.Parser` recognises the message, `translate/4` otherwise.
  """
  @spec from_tool_error(String.t(), String.t(), String.t() | nil, map()) :: Exception.t()
  def from_tool_error(python_type, message, traceback, context \\ %{}) do
    Error.MLErrors.detect(python_type || "", message || "") ||
      translate(python_type, message, traceback, context)
  end

  @doc """
  The exception struct for a Python exception. An empty `python_type`
  becomes `"Exception"`; an empty traceback `nil`.
  """
  @spec translate(String.t(), String.t(), String.t() | nil, map()) :: Exception.t()
  def translate(python_type, message, traceback, context \\ %{}) do
    type = if python_type in [nil, ""], do: "Exception", else: python_type

    struct(exception_module(type),
      message: message || "",
      python_type: type,
      python_traceback: if(traceback in [nil, ""], do: nil, else: traceback),
      context: context
    )
  end
end
