defmodule Snakepit.Redact do
  @moduledoc """
  Keeps secrets out of logs and crash reports.

  Worker configs carry `adapter_env` (API keys are passed to Python that
  way), calls carry user arguments, and the transport carries the
  per-instance secret. Processes that hold any of these implement
  `format_status/1` with `status/1`, so an OTP report that prints their
  state shows `"[redacted]"` in their place.
  """

  @redacted "[redacted]"

  # Values under these keys never reach a report, however deep.
  @secret_keys [
    :adapter_env,
    :env,
    :instance_token,
    :secret,
    :auth_secret,
    :token,
    :password,
    :api_key,
    :args,
    :arguments,
    :binary_parameters,
    :metadata,
    :output
  ]

  @doc """
  A `format_status/1` result with the state redacted (see `term/1`), the
  last message reduced to its tag and the debug log dropped.
  """
  @spec status(map()) :: map()
  def status(status) when is_map(status) do
    status
    |> update(:state, &term/1)
    |> update(:message, &message/1)
    |> update(:reason, &term/1)
    |> update(:log, fn _ -> [] end)
    |> update(:queue, fn _ -> [] end)
  end

  @doc """
  `term` with the value under every secret-bearing key replaced.

      iex> Snakepit.Redact.term(%{id: "w1", config: %{adapter_env: [{"KEY", "s3cret"}]}})
      %{id: "w1", config: %{adapter_env: "[redacted]"}}
  """
  @spec term(term()) :: term()
  def term(%{__struct__: _} = struct),
    do: struct |> Map.from_struct() |> term() |> then(&Map.merge(struct, &1))

  def term(map) when is_map(map) do
    Map.new(map, fn
      {key, _value} when key in @secret_keys -> {key, @redacted}
      {key, value} -> {key, term(value)}
    end)
  end

  def term(list) when is_list(list), do: Enum.map(list, &term/1)
  def term(tuple) when is_tuple(tuple), do: tuple |> Tuple.to_list() |> term() |> List.to_tuple()
  def term(other), do: other

  @doc """
  `config` with its `adapter_env` sealed in a closure, which any printer
  shows as an opaque function: for configs that travel in child specs and
  start arguments (which supervisors may print). `unseal/1` undoes it.

      iex> sealed = Snakepit.Redact.seal(%{adapter_env: [{"KEY", "s3cret"}]})
      iex> inspect(sealed) =~ "s3cret"
      false
      iex> Snakepit.Redact.unseal(sealed)
      %{adapter_env: [{"KEY", "s3cret"}]}
  """
  @spec seal(map()) :: map()
  def seal(%{adapter_env: env} = config) when not is_function(env),
    do: %{config | adapter_env: fn -> env end}

  def seal(config), do: config

  @doc "The config `seal/1` sealed, as it was."
  @spec unseal(map()) :: map()
  def unseal(%{adapter_env: env} = config) when is_function(env, 0),
    do: %{config | adapter_env: env.()}

  def unseal(config), do: config

  # A message is described by its tag: its contents may be output lines or
  # call arguments.
  defp message(message) when is_tuple(message) and tuple_size(message) > 0,
    do: {elem(message, 0), @redacted}

  defp message(message) when is_atom(message), do: message
  defp message(_message), do: @redacted

  defp update(map, key, fun) do
    case map do
      %{^key => value} -> Map.put(map, key, fun.(value))
      _ -> map
    end
  end
end
