defmodule Snakepit.Error.PythonErrorStruct do
  @moduledoc """
  The shape every translated Python exception shares. `use` it with
  `python_type: "ValueError"` to define one of the `Snakepit.Error.*`
  exception structs, with the fields:

    * `:message` - the exception's message (`str(exc)` in Python)
    * `:python_type` - the Python class name, e.g. `"ValueError"` (for a
      subclass such as `ModuleNotFoundError`, the subclass's name)
    * `:python_traceback` - the formatted Python traceback
    * `:context` - where it happened: `%{tool: ..., worker_id: ..., kind: ...}`

  `Exception.message/1` gives `"<python_type>: <message>"`.
  """

  @doc false
  defmacro __using__(opts) do
    python_type = Keyword.fetch!(opts, :python_type)

    quote do
      @type t :: %__MODULE__{
              message: String.t(),
              python_type: String.t(),
              python_traceback: String.t() | nil,
              context: map()
            }

      defexception message: "",
                   python_type: unquote(python_type),
                   python_traceback: nil,
                   context: %{}

      @impl true
      def message(%__MODULE__{python_type: type, message: message}), do: "#{type}: #{message}"
    end
  end
end
