defmodule Snakepit.Error do
  @moduledoc """
  Structured error for Snakepit runtime failures.

  Every public function that can fail returns `{:error, %Snakepit.Error{}}`
  (or one of the Python exception structs under `Snakepit.Error.*`), so
  callers can match on `category` instead of parsing messages.
  """

  @type category :: :worker | :timeout | :python_error | :grpc_error | :validation | :pool

  @type t :: %__MODULE__{
          category: category(),
          message: String.t(),
          details: map(),
          python_traceback: String.t() | nil,
          grpc_status: atom() | nil
        }

  defexception [:category, :message, details: %{}, python_traceback: nil, grpc_status: nil]

  @impl true
  def message(%__MODULE__{category: category, message: message}), do: "[#{category}] #{message}"

  @doc "A worker-related error (not found, crashed, failed to start)."
  @spec worker_error(String.t(), map()) :: t()
  def worker_error(message, details \\ %{}), do: new(:worker, message, details)

  @doc "An operation ran out of time."
  @spec timeout_error(String.t(), map()) :: t()
  def timeout_error(message, details \\ %{}), do: new(:timeout, message, details)

  @doc "Input was rejected before anything was sent."
  @spec validation_error(String.t(), map()) :: t()
  def validation_error(message, details \\ %{}), do: new(:validation, message, details)

  @doc "The pool could not take or place the request."
  @spec pool_error(String.t(), map()) :: t()
  def pool_error(message, details \\ %{}), do: new(:pool, message, details)

  @doc "A gRPC transport or protocol error, with its status code."
  @spec grpc_error(atom(), String.t(), map()) :: t()
  def grpc_error(status, message, details \\ %{}) do
    %{new(:grpc_error, message, details) | grpc_status: status}
  end

  @doc "A Python exception, with its type and traceback."
  @spec python_error(String.t(), String.t(), String.t() | nil, map()) :: t()
  def python_error(exception_type, message, traceback, details \\ %{}) do
    %{
      new(:python_error, message, Map.put(details, :exception_type, exception_type))
      | python_traceback: traceback
    }
  end

  defp new(category, message, details) when is_binary(message) and is_map(details) do
    %__MODULE__{category: category, message: message, details: details}
  end
end
