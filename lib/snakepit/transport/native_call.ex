defmodule Snakepit.Transport.NativeCall do
  @moduledoc """
  What a call to a worker through the native core is made of, for both
  the unary path (`Snakepit.GRPC.Client`) and the streaming one
  (`Snakepit.Transport.StreamCall`): which transport the worker has, the
  call's native options, its arguments re-sent with structs encoded,
  waiting for its reply, and the reply turned into a result or a
  `Snakepit.Error`.
  """

  alias Snakepit.Error
  alias Snakepit.Pool.Deadline

  # ToolError kinds that mean "no tool ran": an unknown tool, or a
  # streaming tool called with execute/3.
  # Waiting past the call's own deadline is a safety net: the native core
  # always answers by its deadline.
  @reply_slack_ms 5_000

  @doc "`:lane` for a worker with a call lane, else `:grpc`."
  @spec transport(map()) :: :lane | :grpc
  def transport(%{lane: lane}) when lane != nil, do: :lane
  def transport(_worker), do: :grpc

  @doc """
  Sends `args` with `send` (a function of the arguments that starts the
  call). The native core encodes plain terms itself; arguments holding
  structs it cannot encode are converted (`Snakepit.Python.StructEncoding`) and
  sent again.
  """
  @spec send_encoded(map(), (map() -> term())) :: term()
  def send_encoded(args, send) do
    case send.(args) do
      {:error, {:struct_value, _}} -> send_converted(args, send)
      started -> started
    end
  end

  @doc "`send_encoded/2` after a first send refused `args` for their structs."
  @spec send_converted(map(), (map() -> term())) :: term()
  def send_converted(args, send) do
    case Snakepit.Python.StructEncoding.convert(args) do
      {:ok, converted} -> send.(converted)
      {:error, message} -> {:error, {:invalid_argument, message}}
    end
  end

  @doc """
  The native options of a call made with `opts` (`:deadline`,
  `:request_id`, `:session_id`, `:metadata`, `:binary_parameters`); a
  `timeout_ms` of 0 means no deadline.
  """
  @spec options(keyword()) :: map()
  def options(opts) do
    %{
      timeout_ms:
        opts |> Keyword.get(:deadline, :infinity) |> Deadline.remaining() |> timeout_ms(),
      request_id: Keyword.get(opts, :request_id),
      session_id: Keyword.get(opts, :session_id),
      metadata: Keyword.get(opts, :metadata),
      binary_parameters: Keyword.get(opts, :binary_parameters)
    }
  end

  @doc "The native `timeout_ms` of a call that has `remaining` ms (0: no deadline)."
  @spec timeout_ms(non_neg_integer() | :infinity) :: non_neg_integer()
  def timeout_ms(:infinity), do: 0
  def timeout_ms(remaining), do: max(remaining, 1)

  @doc "How long to wait for the reply of a call of `timeout_ms` (0: no deadline)."
  @spec wait_ms(non_neg_integer()) :: timeout()
  def wait_ms(0), do: :infinity
  def wait_ms(timeout_ms), do: timeout_ms + @reply_slack_ms

  @doc "The reply `{ref, reply}` of a call of `timeout_ms`, or a timeout."
  @spec await(reference(), non_neg_integer()) :: term()
  def await(ref, timeout_ms) do
    receive do
      {^ref, reply} -> reply
    after
      wait_ms(timeout_ms) -> {:error, {:timeout, "no reply by the call's deadline"}}
    end
  end

  @doc "The error of arguments of `tool` the native core could not send."
  @spec invalid_args(String.t(), String.t()) :: Error.t()
  def invalid_args(tool, message) do
    Error.validation_error("arguments of #{tool} cannot be sent: #{message}", %{tool: tool})
  end

  @doc """
  A reply of the native core as a result: `{:ok, value}` as it came, an
  error as a `Snakepit.Error` (or one of the `Snakepit.Error.*` exception
  structs for a Python exception, see `Snakepit.Error.PythonTranslation`)
  with the tool and worker in its details.
  """
  @spec translate({:ok, term()} | {:error, term()}, String.t(), map()) ::
          {:ok, term()} | {:error, Error.t() | Exception.t()}
  def translate({:ok, _} = ok, _tool, _worker), do: ok

  def translate({:error, reason}, tool, worker) do
    details = %{tool: tool, worker_id: worker.id}
    {:error, Snakepit.Error.Native.to_error(reason, {:call, tool, worker.id}, details)}
  end
end
