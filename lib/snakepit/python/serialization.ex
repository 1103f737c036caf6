defmodule Snakepit.Serialization do
  @moduledoc """
  Helpers for values that came back from Python.

  Results travel as JSON. Python objects that JSON cannot hold are first
  converted (`model_dump()`, `to_dict()`, `_asdict()`, `tolist()`,
  `isoformat()`, dataclasses, enums, sets, UUIDs); what still cannot be
  converted arrives as an *unserializable marker* in its place:

      %{"__ffi_unserializable__" => true, "__type__" => "module.ClassName"}

  The worker's environment decides how much the marker says:
  `SNAKEPIT_UNSERIALIZABLE_DETAIL` is `none` (the default: the type only),
  `type` (a placeholder string `"<unserializable module.Class>"` instead of
  a marker), `repr_truncated` (adds `"__repr__"`; may leak secrets) or
  `repr_redacted_truncated` (adds a `"__repr__"` with common secrets
  masked, best effort). `SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN` bounds the
  repr (default 500, at most 2000). Workers inherit the VM's environment,
  or set them per pool with `adapter_env: [{"SNAKEPIT_UNSERIALIZABLE_DETAIL",
  "repr_redacted_truncated"}]`.
  """

  @marker "__ffi_unserializable__"

  @doc """
  True when `value` is an unserializable marker.

      iex> Snakepit.Serialization.unserializable?(%{"__ffi_unserializable__" => true})
      true
      iex> Snakepit.Serialization.unserializable?(%{"key" => "value"})
      false
      iex> Snakepit.Serialization.unserializable?(nil)
      false
  """
  @spec unserializable?(term()) :: boolean()
  def unserializable?(%{@marker => true}), do: true
  def unserializable?(_value), do: false

  @doc """
  The type and repr a marker carries (`nil` where absent), or `:error`
  for anything that is not a marker.

      iex> marker = %{"__ffi_unserializable__" => true, "__type__" => "datetime.datetime"}
      iex> {:ok, info} = Snakepit.Serialization.unserializable_info(marker)
      iex> info
      %{type: "datetime.datetime", repr: nil}
      iex> Snakepit.Serialization.unserializable_info(%{"key" => "value"})
      :error
  """
  @spec unserializable_info(term()) ::
          {:ok, %{type: String.t() | nil, repr: String.t() | nil}} | :error
  def unserializable_info(%{@marker => true} = marker) do
    {:ok, %{type: string_or_nil(marker["__type__"]), repr: string_or_nil(marker["__repr__"])}}
  end

  def unserializable_info(_value), do: :error

  defp string_or_nil(value) when is_binary(value), do: value
  defp string_or_nil(_), do: nil
end
