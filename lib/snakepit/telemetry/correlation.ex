defmodule Snakepit.Telemetry.Correlation do
  @moduledoc """
  Correlation ids: every call carries one, so its events on both sides can
  be put together. The caller gives it (`correlation_id:` option, a string)
  or one is made (`new_id/0`). It is in the metadata of the call's Elixir
  events (`[:snakepit, :request, :executed]`, `[:snakepit, :grpc_worker,
  ...]`), reaches the worker in the request's metadata (Python:
  `SessionContext.correlation_id`, and the metadata of the worker's own
  telemetry events during the call). A W3C `traceparent:` option is passed
  to the worker the same way.
  """

  @doc """
  A new correlation id: 32 lowercase hex digits, unique among this VM's
  ids (its second half is `:erlang.unique_integer/1`) and, with
  overwhelming odds, among all VMs' (its first half is 8 random bytes drawn
  once per VM).

  Every call makes one, so making one draws nothing random: 16 bytes of
  `:crypto.strong_rand_bytes/1` hex-encoded cost twice the CPU of this with
  8 callers on 2 cores. Ids correlate events; they are no secret.
  """
  @spec new_id() :: String.t()
  def new_id do
    <<a, b, c, d, e, f, g, h>> = <<:erlang.unique_integer([:positive])::64>>

    # Byte by byte from a table: :binary.encode_hex/2 costs about ten times
    # as much, on every call.
    <<vm_prefix()::binary, hex(a)::binary, hex(b)::binary, hex(c)::binary, hex(d)::binary,
      hex(e)::binary, hex(f)::binary, hex(g)::binary, hex(h)::binary>>
  end

  @hex List.to_tuple(for byte <- 0..255, do: :binary.encode_hex(<<byte>>, :lowercase))

  defp hex(byte), do: elem(@hex, byte)

  @doc false
  # Drawn at application start, before any caller can race to draw it
  # (two first callers would each store one; their ids stay unique, but
  # the VM's half would differ between them).
  @spec init_vm_prefix() :: :ok
  def init_vm_prefix do
    _ = vm_prefix()
    :ok
  end

  # The VM's half of every id, hex-encoded once.
  defp vm_prefix do
    case :persistent_term.get({__MODULE__, :vm_prefix}, nil) do
      nil ->
        # Two first callers may each store one; ids stay unique either way.
        prefix = :binary.encode_hex(:crypto.strong_rand_bytes(8), :lowercase)
        :persistent_term.put({__MODULE__, :vm_prefix}, prefix)
        prefix

      prefix ->
        prefix
    end
  end

  @doc """
  `id` when it is a non-empty string, else a new one.

      iex> Snakepit.Telemetry.Correlation.ensure("abc")
      "abc"
      iex> byte_size(Snakepit.Telemetry.Correlation.ensure(nil))
      32
  """
  @spec ensure(String.t() | nil) :: String.t()
  def ensure(id) when is_binary(id) and id != "", do: id
  def ensure(_id), do: new_id()

  @doc """
  Call options with a `:correlation_id` (the given one, or a new one), or a
  `:validation` error for one that is not a non-empty string.
  """
  @spec ensure_option(keyword()) :: {:ok, keyword()} | {:error, Snakepit.Error.t()}
  def ensure_option(opts) do
    with {:ok, id} <- of_options(opts) do
      if :lists.keymember(:correlation_id, 1, opts),
        do: {:ok, opts},
        else: {:ok, [{:correlation_id, id} | opts]}
    end
  end

  @doc false
  # The call's correlation id, from checked call options: the given one or
  # a new one, without building new options (`ensure_option/1`).
  @spec of_options(keyword()) :: {:ok, String.t()} | {:error, Snakepit.Error.t()}
  def of_options(opts) do
    case :lists.keyfind(:correlation_id, 1, opts) do
      false -> {:ok, new_id()}
      {_, id} when is_binary(id) and id != "" -> {:ok, id}
      {_, other} -> invalid("correlation_id must be a non-empty string, got: #{inspect(other)}")
    end
  end

  @doc "The request metadata for the worker: the caller's, plus the correlation id and traceparent."
  @spec worker_metadata(keyword()) :: %{String.t() => String.t()}
  def worker_metadata(opts), do: worker_metadata(opts, Keyword.get(opts, :correlation_id))

  @doc false
  # `worker_metadata/1` with the call's correlation id given apart.
  @spec worker_metadata(keyword(), String.t() | nil) :: %{String.t() => String.t()}
  def worker_metadata(opts, correlation_id) do
    metadata =
      case :lists.keyfind(:metadata, 1, opts) do
        {_, metadata} when metadata != nil -> metadata
        _ -> %{}
      end

    traceparent =
      case :lists.keyfind(:traceparent, 1, opts) do
        {_, traceparent} -> traceparent
        false -> nil
      end

    metadata
    |> put_given("correlation_id", correlation_id)
    |> put_given("traceparent", traceparent)
  end

  defp put_given(map, _key, nil), do: map
  defp put_given(map, key, value), do: Map.put(map, key, to_string(value))

  defp invalid(message), do: {:error, Snakepit.Error.validation_error(message)}
end
