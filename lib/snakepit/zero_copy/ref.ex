defmodule Snakepit.ZeroCopyRef do
  @moduledoc """
  A handle to an array (`:dlpack`) or an Arrow IPC stream (`:arrow`) held
  in shared memory, made by `Snakepit.ZeroCopy.to_dlpack/2` and
  `Snakepit.ZeroCopy.to_arrow/2`, or returned by a Python tool.

  Put it anywhere in the arguments of `Snakepit.execute/3` and friends: the
  worker maps the memory and receives a ready object, the bytes never
  travel in the message. Read it with `Snakepit.ZeroCopy.from_dlpack/2` or
  `Snakepit.ZeroCopy.from_arrow/2`; release it with
  `Snakepit.ZeroCopy.close/1` (or let it go: a ref no process references
  any more is released at garbage collection, so the refs of a process
  that dies are released with it).

  Fields (read them, do not build the struct by hand):

    * `kind` - `:dlpack` or `:arrow`
    * `bytes` - size of the payload
    * `dtype`, `shape` - element type (an atom such as `:float32`, or a
      string for a type Snakepit has no name for) and dimensions (a tuple)
      of a `:dlpack` ref; `nil` for `:arrow`
    * `device` - `:cpu` (GPU memory is not supported yet)
    * `owner` - who made the region: `:elixir` or `:python` (a ref a tool
      returned belongs to the Elixir side from then on)
    * `copy` - `true` when the payload is held on the heap and travels as
      bytes (zero copy disabled or unavailable: the copying fallback)
    * `metadata` - what the maker attached (Arrow refs from Python:
      `%{"num_rows" => ..., "num_columns" => ...}`), or `nil`
    * `ref` - the native region (opaque)
  """

  @typedoc "Where the memory is."
  @type device :: :cpu | :cuda | :mps

  @typedoc "What the memory holds."
  @type kind :: :dlpack | :arrow

  @type t :: %__MODULE__{
          bytes: non_neg_integer() | nil,
          copy: boolean() | nil,
          device: device() | nil,
          dtype: atom() | String.t() | nil,
          kind: kind(),
          metadata: map() | nil,
          owner: :elixir | :python | nil,
          ref: reference(),
          shape: tuple() | list() | nil
        }

  @enforce_keys [:kind, :ref]
  defstruct [:bytes, :copy, :device, :dtype, :kind, :metadata, :owner, :ref, :shape]

  defimpl Inspect do
    import Inspect.Algebra

    def inspect(ref, opts) do
      fields = [kind: ref.kind, owner: ref.owner, bytes: ref.bytes, dtype: ref.dtype]
      fields = if ref.shape, do: fields ++ [shape: ref.shape], else: fields
      fields = if ref.copy, do: fields ++ [copy: true], else: fields
      concat(["#Snakepit.ZeroCopyRef<", to_doc(fields, opts), ">"])
    end
  end
end
