defmodule Snakepit.Telemetry.SafeMetadata do
  @moduledoc """
  Metadata and measurements from Python, made safe for Elixir handlers.

  Keys in `allowed_atom_keys/0` become atoms; every other key stays a
  string, so no data ever creates an atom. Values are kept when they are
  numbers, booleans, nil or strings (cut to #{1024} bytes); maps and lists
  are kept to a depth of 3 and #{64} entries; anything else (and anything
  beyond the limits) is dropped.
  """

  alias Snakepit.Telemetry.Naming

  @allowed ~w(worker_id pool_name pool session_id tool tool_name correlation_id node
              error_type error_message name request_id python_pid phase kind reason
              method status model operation stage)a
  @atoms Map.new(@allowed, &{Atom.to_string(&1), &1})

  @max_string 1024
  @max_entries 64
  @max_depth 3

  @doc "The metadata keys that become atoms."
  @spec allowed_atom_keys() :: [atom()]
  def allowed_atom_keys, do: @allowed

  @doc """
  `metadata` with allowed keys as atoms and unsafe values dropped.

      iex> Snakepit.Telemetry.SafeMetadata.sanitize(%{"node" => "test@host", "unknown" => "value"})
      {:ok, %{"unknown" => "value", node: "test@host"}}
  """
  @spec sanitize(map()) :: {:ok, map()} | {:error, :not_a_map}
  def sanitize(metadata) when is_map(metadata), do: {:ok, clean_map(metadata, 1)}
  def sanitize(_other), do: {:error, :not_a_map}

  @doc """
  Python's metadata, sanitized, with Elixir's context (a keyword list or map
  with atom keys) on top.

      iex> Snakepit.Telemetry.SafeMetadata.enrich(
      ...>   %{"tool" => "predict"},
      ...>   [node: :nonode@nohost, worker_id: "worker_1"]
      ...> )
      {:ok, %{tool: "predict", node: :nonode@nohost, worker_id: "worker_1"}}
  """
  @spec enrich(map(), keyword() | map()) :: {:ok, map()} | {:error, :not_a_map}
  def enrich(python_metadata, elixir_context) do
    with {:ok, clean} <- sanitize(python_metadata),
         do: {:ok, Map.merge(clean, Map.new(elixir_context))}
  end

  @doc """
  Measurements with known keys as atoms (others stay strings); every value
  must be a number.

      iex> Snakepit.Telemetry.SafeMetadata.measurements(%{"duration" => 1000})
      {:ok, %{duration: 1000}}
      iex> Snakepit.Telemetry.SafeMetadata.measurements(%{"duration" => "soon"})
      {:error, {:not_a_number, "duration"}}
  """
  @spec measurements(map()) :: {:ok, map()} | {:error, term()}
  def measurements(measurements) when is_map(measurements) do
    if map_size(measurements) > @max_entries do
      {:error, :too_many_measurements}
    else
      Enum.reduce_while(measurements, {:ok, %{}}, fn {key, value}, {:ok, acc} ->
        cond do
          not is_number(value) -> {:halt, {:error, {:not_a_number, key}}}
          not is_binary(key) and not is_atom(key) -> {:halt, {:error, {:bad_key, key}}}
          true -> {:cont, {:ok, Map.put(acc, measurement_key(key), value)}}
        end
      end)
    end
  end

  def measurements(_other), do: {:error, :not_a_map}

  @doc """
  Both maps merged, the second winning; neither is converted.

      iex> Snakepit.Telemetry.SafeMetadata.merge(%{"tool" => "predict"}, %{node: :nonode@nohost})
      {:ok, %{"tool" => "predict", node: :nonode@nohost}}
  """
  @spec merge(map(), map()) :: {:ok, map()}
  def merge(first, second) when is_map(first) and is_map(second),
    do: {:ok, Map.merge(first, second)}

  defp measurement_key(key) do
    case Naming.measurement_key(key) do
      {:ok, atom} -> atom
      {:error, _} -> if is_binary(key), do: cut(key), else: Atom.to_string(key)
    end
  end

  defp clean_map(map, depth) do
    map
    |> Enum.take(@max_entries)
    |> Enum.reduce(%{}, fn {key, value}, acc ->
      case {clean_key(key), clean_value(value, depth)} do
        {:drop, _} -> acc
        {_, :drop} -> acc
        {k, v} -> Map.put(acc, k, v)
      end
    end)
  end

  defp clean_key(key) when is_atom(key) and key in @allowed, do: key
  defp clean_key(key) when is_atom(key), do: Atom.to_string(key)
  defp clean_key(key) when is_binary(key), do: Map.get(@atoms, key, cut(key))
  defp clean_key(_key), do: :drop

  defp clean_value(value, _depth) when is_number(value) or is_boolean(value) or is_nil(value),
    do: value

  defp clean_value(value, _depth) when is_binary(value), do: cut(value)
  defp clean_value(value, _depth) when is_atom(value), do: value
  defp clean_value(_value, depth) when depth >= @max_depth, do: :drop
  defp clean_value(value, depth) when is_map(value), do: clean_map(value, depth + 1)

  defp clean_value(value, depth) when is_list(value) do
    value
    |> Enum.take(@max_entries)
    |> Enum.map(&clean_value(&1, depth + 1))
    |> Enum.reject(&(&1 == :drop))
  end

  defp clean_value(_value, _depth), do: :drop

  defp cut(string) when byte_size(string) <= @max_string, do: string

  defp cut(string) do
    # Keep whole UTF-8 characters: drop up to 3 bytes of a cut character.
    cut = binary_part(string, 0, @max_string)
    shorter = for n <- 1..3, do: binary_part(cut, 0, @max_string - n)
    Enum.find([cut | shorter], cut, &String.valid?/1)
  end
end
