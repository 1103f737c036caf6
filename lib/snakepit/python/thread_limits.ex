defmodule Snakepit.PythonThreadLimits do
  @moduledoc """
  Thread limits for the native libraries inside Python workers.

  With many worker processes per host, letting every one of them start a
  full-size BLAS/OpenMP thread pool oversubscribes the CPU. By default each
  library gets one thread, which suits the process profile; raise the
  limits for the thread profile or for few large workers.

  Keys and the environment variables they are meant for:

    * `:openblas` - `OPENBLAS_NUM_THREADS`
    * `:omp` - `OMP_NUM_THREADS`
    * `:mkl` - `MKL_NUM_THREADS`
    * `:numexpr` - `NUMEXPR_NUM_THREADS`
    * `:grpc_poll_threads` - gRPC polling threads of the worker's server

  `resolve/1` merges partial overrides (e.g. from
  `config :snakepit, :python_thread_limits, omp: 4`) with the defaults and
  never fails on a bad value: it keeps the default instead, so a typo in
  configuration cannot stop workers from starting.
  """

  @type t :: %{
          optional(:openblas) => pos_integer(),
          optional(:omp) => pos_integer(),
          optional(:mkl) => pos_integer(),
          optional(:numexpr) => pos_integer(),
          optional(:grpc_poll_threads) => pos_integer()
        }

  @defaults %{openblas: 1, omp: 1, mkl: 1, numexpr: 1, grpc_poll_threads: 1}
  @keys Map.keys(@defaults)
  @string_keys Map.new(@keys, &{Atom.to_string(&1), &1})

  @doc """
  Default thread limit configuration: one thread for each library.

      iex> Snakepit.PythonThreadLimits.defaults()
      %{openblas: 1, omp: 1, mkl: 1, numexpr: 1, grpc_poll_threads: 1}
  """
  @spec defaults() :: t()
  def defaults, do: @defaults

  @doc """
  Merges a user-supplied configuration with the defaults.

  Accepts `nil`, a map or a keyword list. Unknown keys are ignored; string
  values are converted with `String.to_integer/1` when they hold an
  integer; values that are not positive integers after that keep the
  default. Raises `ArgumentError` when the configuration is not `nil`, a
  map or a keyword list.

      iex> Snakepit.PythonThreadLimits.resolve(omp: 4, mkl: "2", openblas: 0, unknown: 9)
      %{openblas: 1, omp: 4, mkl: 2, numexpr: 1, grpc_poll_threads: 1}
  """
  @spec resolve(nil | map() | keyword()) :: t()
  def resolve(nil), do: @defaults

  def resolve(config) when is_list(config) do
    if Keyword.keyword?(config) do
      resolve(Map.new(config))
    else
      invalid!(config)
    end
  end

  def resolve(config) when is_map(config) do
    Enum.reduce(config, @defaults, fn {key, value}, acc ->
      with {:ok, key} <- known_key(key),
           {:ok, value} <- coerce(value) do
        Map.put(acc, key, value)
      else
        :error -> acc
      end
    end)
  end

  def resolve(other), do: invalid!(other)

  defp known_key(key) when key in @keys, do: {:ok, key}
  defp known_key(key) when is_binary(key), do: Map.fetch(@string_keys, key)
  defp known_key(_key), do: :error

  defp coerce(value) when is_integer(value) and value > 0, do: {:ok, value}

  defp coerce(value) when is_binary(value) do
    value |> String.trim() |> String.to_integer() |> coerce()
  rescue
    ArgumentError -> :error
  end

  defp coerce(_value), do: :error

  defp invalid!(config) do
    raise ArgumentError,
          "invalid :python_thread_limits configuration: expected nil, a map or a keyword list, " <>
            "got: #{inspect(config)}"
  end
end
