defmodule Snakepit.Error.Native do
  @moduledoc """
  The one place where the native core's errors become `%Snakepit.Error{}`.

  Every NIF and every asynchronous reply of the native core fails as
  `{:error, {kind, message}}` (see `native/snakepit_native/src/error.rs`):

  | kind | category |
  |---|---|
  | `:invalid_argument` | `:validation` (nothing was done; or a worker's reply held a bad zero-copy ref, refused and removed) |
  | `:timeout`, `:deadline_exceeded` | `:timeout` |
  | a gRPC status name (`:unavailable`, `:internal`, ...) | `:grpc_error`, with `grpc_status` |
  | an errno name (`:enoent`, `:eaddrinuse`, ...) or `:os` | `:worker` |
  | `:invalid_json`, `:limit_exceeded`, `:native_panic`, `:already_replied`, `:expired` | `:worker` |

  The kind is kept in `details.native`.
  """

  alias Snakepit.Error

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

  @type reason :: {atom(), String.t()}

  @doc """
  `%Snakepit.Error{}` for a native `{kind, message}`, with `details` and
  `context` (prefixed to the message when given).

      iex> Snakepit.Error.Native.to_error({:invalid_argument, "bad"}, "spawn").category
      :validation
      iex> e = Snakepit.Error.Native.to_error({:unavailable, "gone"}, nil, %{worker_id: "w"})
      iex> {e.category, e.grpc_status, e.details}
      {:grpc_error, :unavailable, %{worker_id: "w", native: :unavailable}}
  """
  @spec to_error(reason(), String.t() | nil, map()) :: Error.t()
  def to_error({kind, message}, context \\ nil, details \\ %{}) when is_atom(kind) do
    text = if context, do: "#{context}: #{message}", else: message
    details = Map.put(details, :native, kind)

    cond do
      kind == :invalid_argument -> Error.validation_error(text, details)
      kind in [:timeout, :deadline_exceeded] -> Error.timeout_error(text, details)
      kind in @grpc_statuses -> Error.grpc_error(kind, text, details)
      true -> Error.worker_error(text, details)
    end
  end

  @doc "Is `reason` a native error of one of `kinds`?"
  @spec kind?(term(), [atom()]) :: boolean()
  def kind?({kind, message}, kinds) when is_atom(kind) and is_binary(message), do: kind in kinds
  def kind?(_reason, _kinds), do: false

  @doc "The gRPC status names a native reason may carry as its kind."
  @spec grpc_statuses() :: [atom()]
  def grpc_statuses, do: @grpc_statuses
end
