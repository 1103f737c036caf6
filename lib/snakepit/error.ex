defmodule Snakepit.Error do
  @moduledoc """
  Structured error for Snakepit runtime failures.

  Every public function that can fail returns `{:error, %Snakepit.Error{}}`
  (or one of the exception structs under `Snakepit.Error.*`), so callers can
  match on `category` instead of parsing messages.

  Python exceptions translated from the gRPC bridge are returned as
  `Snakepit.Error.*` exception structs; `Snakepit.Error` stays the type for
  failures of Snakepit itself.

  ## Categories

    * `:worker` - a worker process is missing, crashed or failed to start
    * `:timeout` - an operation ran out of time
    * `:python_error` - an exception raised by Python code
    * `:grpc_error` - a gRPC transport or protocol failure
    * `:validation` - input rejected before anything was sent; for a bad
      option, `details` has `option`, `value` and `expected` (what is allowed)
    * `:pool` - the pool could not take or place the request; `details.reason`
      says why (`:pool_saturated`, `:worker_busy`, ..., or `:shutdown` for a
      call cut short because its pool or Snakepit is stopping)

  ## Examples

      case Snakepit.execute("command", %{}) do
        {:ok, result} -> result
        {:error, %Snakepit.Error{category: :timeout}} -> retry()
        {:error, %Snakepit.Error{category: :python_error} = error} ->
          Logger.error("Python error: \#{error.message}")
        {:error, error} -> {:error, error}
      end

  `Snakepit.Error` is an exception, so `raise error` and
  `Exception.message(error)` work too.
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

  @doc """
  Creates a worker-related error (not found, crashed, failed to start).

      iex> Snakepit.Error.worker_error("Worker not found", %{worker_id: "w1"})
      %Snakepit.Error{category: :worker, message: "Worker not found", details: %{worker_id: "w1"}}
  """
  @spec worker_error(String.t(), map()) :: t()
  def worker_error(message, details \\ %{}), do: new(:worker, message, details)

  @doc """
  Creates a timeout error.

      iex> Snakepit.Error.timeout_error("Request timed out", %{timeout_ms: 5000})
      %Snakepit.Error{category: :timeout, message: "Request timed out", details: %{timeout_ms: 5000}}
  """
  @spec timeout_error(String.t(), map()) :: t()
  def timeout_error(message, details \\ %{}), do: new(:timeout, message, details)

  @doc """
  Creates a validation error: input was rejected before anything was sent.

      iex> Snakepit.Error.validation_error("Invalid field", %{field: "user_id"})
      %Snakepit.Error{category: :validation, message: "Invalid field", details: %{field: "user_id"}}
  """
  @spec validation_error(String.t(), map()) :: t()
  def validation_error(message, details \\ %{}), do: new(:validation, message, details)

  @doc """
  Creates a pool management error.

      iex> Snakepit.Error.pool_error("Pool not found", %{pool_name: :test})
      %Snakepit.Error{category: :pool, message: "Pool not found", details: %{pool_name: :test}}
  """
  @spec pool_error(String.t(), map()) :: t()
  def pool_error(message, details \\ %{}), do: new(:pool, message, details)

  @doc """
  Creates a gRPC communication error carrying its status code.

      iex> error = Snakepit.Error.grpc_error(:unavailable, "Service unavailable")
      iex> {error.category, error.grpc_status, error.message}
      {:grpc_error, :unavailable, "Service unavailable"}
  """
  @spec grpc_error(atom(), String.t(), map()) :: t()
  def grpc_error(status, message, details \\ %{}) when is_atom(status) do
    %{new(:grpc_error, message, details) | grpc_status: status}
  end

  @doc """
  Creates a Python exception error with its traceback.

  The message is prefixed with the exception type, and the type is kept in
  `details.exception_type`.

      iex> error = Snakepit.Error.python_error("ValueError", "Invalid input", "Traceback...")
      iex> {error.category, error.message, error.python_traceback, error.details}
      {:python_error, "ValueError: Invalid input", "Traceback...", %{exception_type: "ValueError"}}
  """
  @spec python_error(String.t(), String.t(), String.t() | nil, map()) :: t()
  def python_error(exception_type, message, traceback, details \\ %{})
      when is_binary(exception_type) and (is_binary(traceback) or is_nil(traceback)) do
    full_message = if exception_type == "", do: message, else: "#{exception_type}: #{message}"

    %{
      new(:python_error, full_message, Map.put(details, :exception_type, exception_type))
      | python_traceback: traceback
    }
  end

  defp new(category, message, details) when is_binary(message) and is_map(details) do
    %__MODULE__{category: category, message: message, details: details}
  end
end
