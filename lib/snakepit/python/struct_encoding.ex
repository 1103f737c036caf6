defmodule Snakepit.Python.StructEncoding do
  @moduledoc """
  Structs in call arguments, encoded the way Elixir's `JSON` and Jason do.

  Plain terms are encoded by the native core directly. When it meets a
  struct it has no encoding for, the call's arguments are converted here
  once and sent again, so only calls that carry structs pay for it:

    * `DateTime`, `NaiveDateTime`, `Date`, `Time` - ISO 8601 strings
    * `Decimal` (when loaded) - its string, as Jason writes it
    * a struct that implements `JSON.Encoder` (Elixir's `JSON`), or
      `Jason.Encoder` when Jason is loaded - what that protocol writes
    * `%Snakepit.ZeroCopyRef{}` - kept: the native core sends it by reference

  Anything else stays a clear `:validation` error naming the struct and
  where it is in the arguments.
  """

  @doc """
  `term` with every struct replaced by its JSON-shaped value, or `{:error,
  message}` for a struct with no encoding.

      iex> Snakepit.Python.StructEncoding.convert(%{"at" => ~D[2026-12-02], "n" => [1]})
      {:ok, %{"at" => "2026-12-02", "n" => [1]}}
  """
  @spec convert(term()) :: {:ok, term()} | {:error, String.t()}
  def convert(term) do
    {:ok, walk(term, [])}
  catch
    {:unencodable, struct, path} ->
      name = struct |> Atom.to_string() |> String.replace_prefix("Elixir.", "")
      where = if path == [], do: "", else: " at " <> Enum.join(Enum.reverse(path))

      {:error,
       "a %#{name}{} struct cannot be encoded as JSON#{where}; implement JSON.Encoder for " <>
         "it, or convert it to a map or string first"}
  end

  defp walk(%Snakepit.ZeroCopyRef{} = ref, _path), do: ref
  defp walk(%DateTime{} = value, _path), do: DateTime.to_iso8601(value)
  defp walk(%NaiveDateTime{} = value, _path), do: NaiveDateTime.to_iso8601(value)
  defp walk(%Date{} = value, _path), do: Date.to_iso8601(value)
  defp walk(%Time{} = value, _path), do: Time.to_iso8601(value)

  defp walk(%module{} = struct, path) do
    cond do
      module == Decimal -> apply(Decimal, :to_string, [struct])
      implements?(JSON.Encoder, struct) -> struct |> JSON.encode!() |> JSON.decode!()
      jason_encodes?(struct) -> struct |> jason(:encode!) |> jason(:decode!)
      true -> throw({:unencodable, module, path})
    end
  end

  defp walk(map, path) when is_map(map) do
    Map.new(map, fn {key, value} -> {key, walk(value, [".#{key_text(key)}" | path])} end)
  end

  defp walk(list, path) when is_list(list), do: walk_list(list, path, 0, [])

  defp walk(tuple, path) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> walk(path) |> List.to_tuple()

  defp walk(other, _path), do: other

  # Cell by cell: an improper tail is kept as it is (the encoder then says
  # it cannot be sent), never a crash here.
  defp walk_list([item | rest], path, i, acc),
    do: walk_list(rest, path, i + 1, [walk(item, ["[#{i}]" | path]) | acc])

  defp walk_list([], _path, _i, acc), do: Enum.reverse(acc)
  defp walk_list(tail, _path, _i, acc), do: :lists.reverse(acc, tail)

  defp key_text(key) when is_binary(key) or is_atom(key) or is_integer(key), do: to_string(key)
  defp key_text(key), do: inspect(key)

  # A protocol implementation for the struct itself, not a fallback to Any.
  defp implements?(protocol, struct) do
    case protocol.impl_for(struct) do
      nil -> false
      impl -> impl != Module.concat(protocol, Any)
    end
  end

  @jason_encoder Module.concat(Jason, Encoder)

  defp jason_encodes?(struct),
    do: Code.ensure_loaded?(@jason_encoder) and implements?(@jason_encoder, struct)

  defp jason(value, fun), do: apply(Jason, fun, [value])
end
