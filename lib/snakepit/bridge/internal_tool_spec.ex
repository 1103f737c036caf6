defmodule Snakepit.Bridge.InternalToolSpec do
  @moduledoc """
  One tool in `Snakepit.Bridge.ToolRegistry`: an Elixir function (`type:
  :local`, with a `handler`) or a tool a Python worker offers (`type:
  :remote`, with the `worker_id` that registered it).

  Separate from the wire's `ToolSpec` message. `parameters` is a list of
  maps `%{name: String.t(), type: String.t(), required: boolean(),
  description: String.t()}`, plus `default:` when the tool declares one.
  `exposed_to_python` says whether Python may call a local tool.
  """

  @type parameter :: %{
          required(:name) => String.t(),
          required(:type) => String.t(),
          required(:required) => boolean(),
          required(:description) => String.t(),
          optional(:default) => term()
        }

  @type t :: %__MODULE__{
          name: String.t(),
          description: String.t(),
          parameters: [parameter()],
          handler: (any() -> any()) | nil,
          exposed_to_python: boolean(),
          metadata: map(),
          type: :local | :remote,
          worker_id: String.t() | nil,
          supports_streaming: boolean()
        }

  @enforce_keys [:name, :type]
  defstruct name: nil,
            description: "",
            parameters: [],
            handler: nil,
            exposed_to_python: false,
            metadata: %{},
            type: :local,
            worker_id: nil,
            supports_streaming: false
end
