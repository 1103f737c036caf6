defmodule Snakepit.Error.Parser do
  @moduledoc """
  Turns Python exception data into structured Elixir errors.

  The parser recognises three families of ML errors from their messages and
  returns a dedicated exception for each:

    * out of memory (CUDA/HIP/MPS allocator messages, `MemoryError`,
      `torch.OutOfMemoryError`, "not enough memory") →
      `Snakepit.Error.OutOfMemory`, with the requested and free byte counts
      and the device when the message states them
    * tensors on different devices, or a device that does not exist →
      `Snakepit.Error.DeviceMismatch`
    * shape errors from NumPy and PyTorch (matmul, `not aligned`,
      broadcasting, size mismatch at a dimension) →
      `Snakepit.Error.ShapeMismatch`

  For these, `message` keeps the Python text (prefixed with the exception
  type) and the struct fields carry what could be extracted from it.

  Anything else becomes the struct of its Python class, as calls return it
  (`Snakepit.Error.ValueError`, `Snakepit.Error.KeyError`, ...,
  `Snakepit.Error.PythonException` for the rest; see
  `Snakepit.Error.PythonTranslation`), with `python_type` and the
  traceback, and emits `[:snakepit, :error, :python_exception]` telemetry.

  The parser never creates atoms from Python data.
  """

  alias Snakepit.Error
  alias Snakepit.Error.{MLErrors, PythonTranslation}

  @grpc_statuses %{
    0 => :ok,
    1 => :cancelled,
    2 => :unknown,
    3 => :invalid_argument,
    4 => :deadline_exceeded,
    5 => :not_found,
    6 => :already_exists,
    7 => :permission_denied,
    8 => :resource_exhausted,
    9 => :failed_precondition,
    10 => :aborted,
    11 => :out_of_range,
    12 => :unimplemented,
    13 => :internal,
    14 => :unavailable,
    15 => :data_loss,
    16 => :unauthenticated
  }

  @doc """
  Parses error data into a structured error.

  Accepts a map with `"type"`, `"message"` and optionally `"traceback"`
  (string or atom keys; `"error_type"` is accepted for `"type"`). Returns
  `{:error, :invalid_input}` for anything else.

      iex> {:ok, error} = Snakepit.Error.Parser.parse(%{"type" => "ValueError", "message" => "Invalid input"})
      iex> {error.__struct__, error.python_type, error.message}
      {Snakepit.Error.ValueError, "ValueError", "Invalid input"}
  """
  @spec parse(map() | term()) :: {:ok, Exception.t()} | {:error, :invalid_input}
  def parse(data) when is_map(data) do
    type = fetch_string(data, ["type", "error_type"])
    message = fetch_string(data, ["message"])
    traceback = fetch_string(data, ["traceback"])

    if is_nil(type) and is_nil(message) do
      {:error, :invalid_input}
    else
      {:ok, classify(type || "Exception", message || "", traceback)}
    end
  end

  def parse(_data), do: {:error, :invalid_input}

  @doc """
  Parses a gRPC error response into a structured error.

  The response is a map with `:message` (or `"message"`) and optionally
  `:status` (a gRPC status atom or its integer code) and `:details` (a map
  or a JSON string). When the details or the message carry a Python
  exception (`"ValueError: ..."`), the result is the same as `parse/1`;
  otherwise it is a `%Snakepit.Error{category: :grpc_error}` with the
  status as an atom.

      iex> {:ok, error} = Snakepit.Error.Parser.from_grpc_error(%{status: 14, message: "connection refused"})
      iex> {error.category, error.grpc_status}
      {:grpc_error, :unavailable}
  """
  @spec from_grpc_error(map()) :: {:ok, Exception.t()} | {:error, :invalid_input}
  def from_grpc_error(response) when is_map(response) do
    message = fetch_string(response, ["message"])
    status = normalize_status(fetch(response, ["status", "code"]))
    details = decode_details(fetch(response, ["details"]))

    cond do
      is_map(details) and python_payload?(details) ->
        parse(details)

      is_binary(message) and python_message?(message) ->
        [type, text] = String.split(message, ": ", parts: 2)
        parse(%{"type" => type, "message" => text, "traceback" => traceback_from(details)})

      is_binary(message) and status != :invalid ->
        {:ok, Error.grpc_error(status, message, if(is_map(details), do: details, else: %{}))}

      true ->
        {:error, :invalid_input}
    end
  end

  def from_grpc_error(_response), do: {:error, :invalid_input}

  @doc """
  Extracts a shape from its text form.

  Understands Python tuples and lists, `torch.Size([...])` and the `AxB`
  form PyTorch uses in matmul errors. Returns `nil` when no shape is found.

      iex> Snakepit.Error.Parser.extract_shape("[3, 224, 224]")
      [3, 224, 224]
      iex> Snakepit.Error.Parser.extract_shape("(10, 20)")
      [10, 20]
      iex> Snakepit.Error.Parser.extract_shape("torch.Size([2, 3])")
      [2, 3]
      iex> Snakepit.Error.Parser.extract_shape("(5,)")
      [5]
      iex> Snakepit.Error.Parser.extract_shape("32x100")
      [32, 100]
      iex> Snakepit.Error.Parser.extract_shape("no shape here")
      nil
  """
  @spec extract_shape(String.t()) :: [integer()] | nil
  defdelegate extract_shape(str), to: Snakepit.Error.MLErrors

  # -- classification -------------------------------------------------------

  defp classify(type, message, traceback) do
    case MLErrors.detect(type, message) do
      nil ->
        Snakepit.Telemetry.emit([:snakepit, :error, :python_exception], %{}, %{
          type: type,
          message: message,
          traceback: traceback
        })

        PythonTranslation.translate(type, message, traceback)

      ml_error ->
        ml_error
    end
  end

  @key_atoms %{
    "type" => :type,
    "error_type" => :error_type,
    "message" => :message,
    "traceback" => :traceback,
    "status" => :status,
    "code" => :code,
    "details" => :details
  }

  defp fetch(map, keys) do
    Enum.find_value(keys, fn key ->
      case Map.get(map, key) do
        nil -> Map.get(map, Map.fetch!(@key_atoms, key))
        value -> value
      end
    end)
  end

  defp fetch_string(map, keys) do
    case fetch(map, keys) do
      value when is_binary(value) ->
        value

      value when is_atom(value) and not is_nil(value) and not is_boolean(value) ->
        Atom.to_string(value)

      _ ->
        nil
    end
  end

  defp normalize_status(nil), do: :unknown
  defp normalize_status(code) when is_integer(code), do: Map.get(@grpc_statuses, code, :unknown)

  defp normalize_status(status) when is_atom(status) do
    if status in Map.values(@grpc_statuses), do: status, else: :unknown
  end

  defp normalize_status(status) when is_binary(status) do
    case Integer.parse(status) do
      {code, ""} ->
        normalize_status(code)

      _ ->
        Enum.find_value(@grpc_statuses, :unknown, fn {_code, name} ->
          if Atom.to_string(name) == String.downcase(status), do: name
        end)
    end
  end

  defp normalize_status(_other), do: :invalid

  defp decode_details(details) when is_binary(details) do
    case JSON.decode(details) do
      {:ok, decoded} when is_map(decoded) -> decoded
      _ -> nil
    end
  end

  defp decode_details(details) when is_map(details), do: details
  defp decode_details(_details), do: nil

  defp python_payload?(details) do
    is_binary(fetch_string(details, ["type", "error_type"])) and
      is_binary(fetch_string(details, ["message"]))
  end

  defp python_message?(message) do
    Regex.match?(
      ~r/\A[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Fault): /,
      message
    )
  end

  defp traceback_from(details) when is_map(details), do: fetch_string(details, ["traceback"])
  defp traceback_from(_details), do: nil
end
