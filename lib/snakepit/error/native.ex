defmodule Snakepit.Error.Native do
  @moduledoc """
  The one place where the native core's errors become Snakepit errors.

  Every NIF and every asynchronous reply of the native core fails as
  `{:error, {kind, message}}`, with `kind` from the fixed table in
  `native/snakepit_native/src/error.rs`; a tool that failed in the worker
  as `{:error, {:tool_error, type, message, traceback, kind}}`. `to_error/3`
  turns either into the error callers return:

  | kind | category |
  |---|---|
  | `:invalid_argument`, `:struct_value` | `:validation` (nothing was done; or a worker's reply held a bad zero-copy ref, refused and removed) |
  | `:closed` | `:validation` (the handle given was closed) |
  | `:timeout`, `:deadline_exceeded` | `:timeout` |
  | another gRPC status name (`:unavailable`, `:internal`, ...) | `:grpc_error`, with `grpc_status` |
  | `:resource_exhausted` from zero copy (`details.zero_copy`) | `:validation` (the live-region limit) |
  | an errno name (`:enoent`, `:eaddrinuse`, ...) or `:os` | `:worker` |
  | `:invalid_json`, `:limit_exceeded`, `:native_panic`, `:already_replied`, `:expired` | `:worker` |
  | `:busy` (a worker not reading its telemetry controls) | `:worker` |
  | `:tool_error` | the Python exception's struct (`Snakepit.Error.PythonTranslation`); `:validation` for a tool the worker does not have or cannot run so, `:timeout` for a cancelled one |

  The kind is kept in `details.native`. A kind missing from the table (a
  native core newer than this module) is a `:worker` error; the tests walk
  `error.rs`'s table so that cannot ship.
  """

  alias Snakepit.Error
  alias Snakepit.Error.PythonTranslation

  @grpc_statuses [
    :cancelled,
    :unknown,
    :not_found,
    :already_exists,
    :permission_denied,
    :resource_exhausted,
    :failed_precondition,
    :aborted,
    :out_of_range,
    :unimplemented,
    :internal,
    :unavailable,
    :data_loss,
    :unauthenticated
  ]

  @errnos [
    :enoent,
    :eacces,
    :eperm,
    :esrch,
    :eaddrinuse,
    :eaddrnotavail,
    :econnrefused,
    :enotdir,
    :eexist,
    :emfile,
    :enomem,
    :eagain,
    :einval,
    :enametoolong,
    :etimedout,
    :epipe,
    :os
  ]

  @categories Map.merge(
                Map.new(@grpc_statuses ++ @errnos, fn kind ->
                  {kind, if(kind in @grpc_statuses, do: :grpc_error, else: :worker)}
                end),
                %{
                  invalid_argument: :validation,
                  struct_value: :validation,
                  closed: :validation,
                  timeout: :timeout,
                  deadline_exceeded: :timeout,
                  invalid_json: :worker,
                  limit_exceeded: :worker,
                  native_panic: :worker,
                  already_replied: :worker,
                  expired: :worker,
                  busy: :worker,
                  tool_error: :python_error
                }
              )

  # Tool errors that are the caller's mistake, caught by the worker before
  # any tool ran.
  @caller_tool_errors ["unknown_tool", "streaming_tool"]

  @typedoc "A native failure: `{kind, message}`, or a tool's error from a worker."
  @type reason ::
          {atom(), String.t()}
          | {:tool_error, String.t(), String.t(), String.t() | nil, String.t()}

  @typedoc """
  What failed: a phrase prefixed to the message (`"spawn"`), a call of a
  tool on a worker (`{:call, tool, worker_id}`: the message says what
  befell the call in its own words), or nil.
  """
  @type context :: String.t() | {:call, String.t(), String.t()} | nil

  @doc """
  The error for a native `reason`, with `details` (the kind added as
  `details.native`) and `context` (see `t:context/0`).
  Never raises: anything else becomes a `:worker` error naming it.

      iex> Snakepit.Error.Native.to_error({:invalid_argument, "bad"}, "spawn").category
      :validation
      iex> e = Snakepit.Error.Native.to_error({:unavailable, "gone"}, nil, %{worker_id: "w"})
      iex> {e.category, e.grpc_status, e.details}
      {:grpc_error, :unavailable, %{worker_id: "w", native: :unavailable}}
  """
  @spec to_error(reason() | term(), context(), map()) :: Error.t() | Exception.t()
  def to_error(reason, context \\ nil, details \\ %{})

  def to_error({:tool_error, type, message, _traceback, kind}, context, details)
      when kind in @caller_tool_errors do
    details = Map.merge(details, %{kind: kind, exception_type: type})
    Error.validation_error(text(context, :tool_error, message), details)
  end

  def to_error({:tool_error, _type, message, _traceback, "cancelled"}, context, details),
    do:
      Error.timeout_error(
        text(context, :cancelled, message),
        Map.put(details, :stop, :interrupted)
      )

  def to_error({:tool_error, type, message, traceback, kind}, context, details),
    do:
      PythonTranslation.from_tool_error(
        type,
        text(context, :tool_error, message),
        traceback,
        Map.put(details, :kind, kind)
      )

  def to_error({kind, message}, context, details) when is_atom(kind) and is_binary(message) do
    text = text(context, kind, message)
    details = Map.put(details, :native, kind)

    case category_in(kind, details) do
      :validation -> Error.validation_error(text, details)
      :timeout -> Error.timeout_error(text, details)
      :grpc_error -> Error.grpc_error(kind, text, details)
      _worker_or_unknown -> Error.worker_error(text, details)
    end
  end

  def to_error(other, context, details),
    do:
      Error.worker_error(
        text(context, :unexpected, "unexpected native reply: #{inspect(other)}"),
        details
      )

  @doc """
  The category of the native `kind`, or nil for a kind this module does not
  know.

      iex> Snakepit.Error.Native.category(:enoent)
      :worker
      iex> Snakepit.Error.Native.category(:made_up)
      nil
  """
  @spec category(atom()) :: Error.category() | nil
  def category(kind), do: Map.get(@categories, kind)

  # The live-region limit of zero copy: refused before anything was made.
  defp category_in(:resource_exhausted, %{zero_copy: _}), do: :validation
  defp category_in(kind, _details), do: category(kind)

  # A call's own words for what befell it; else the context, then the
  # native core's message.
  defp text({:call, _tool, _worker}, :tool_error, message), do: message
  defp text({:call, tool, _worker}, :cancelled, message), do: "#{tool} was cancelled: #{message}"
  defp text({:call, tool, _worker}, :timeout, _message), do: "#{tool} did not finish in time"

  defp text({:call, tool, _worker}, :limit_exceeded, message),
    do: "the result of #{tool} cannot be taken: #{message}"

  defp text({:call, _tool, worker}, :invalid_json, message),
    do: "worker #{worker} returned malformed JSON: #{message}"

  defp text({:call, _tool, worker}, _kind, message), do: "worker #{worker}: #{message}"
  defp text(nil, _kind, message), do: message
  defp text(context, _kind, message), do: "#{context}: #{message}"
end
