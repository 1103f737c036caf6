defmodule Snakepit.Test.RandomTerm do
  @moduledoc """
  Random Elixir terms for the randomized tests (StreamData is a hex
  package, not reachable here), and the oracle: what a term becomes after
  a round trip through JSON and a Python worker.

  Every draw uses the process's `:rand` state, so a test that seeds it
  (`seed/1`) replays the same terms.
  """

  defmodule Tagged do
    @moduledoc "A struct of the tests' own, with no JSON encoding."
    defstruct [:value]
  end

  @doc "Seeds this process's generator; returns the seed."
  @spec seed(integer()) :: integer()
  def seed(seed) do
    :rand.seed(:exsss, {seed, seed * 7 + 1, seed * 13 + 2})
    seed
  end

  @doc """
  A random term of about `budget` nodes: every kind of leaf the VM has
  (valid or not for JSON), and maps, lists and tuples around them.
  """
  @spec term(non_neg_integer()) :: term()
  def term(budget) when budget <= 1, do: leaf()

  def term(budget) do
    case :rand.uniform(10) do
      n when n <= 3 -> leaf()
      n when n <= 6 -> map(budget)
      n when n <= 8 -> list(budget)
      9 -> List.to_tuple(children(budget))
      10 -> improper_or_struct(budget)
    end
  end

  defp children(budget) do
    n = :rand.uniform(min(budget, 8)) - 1
    share = max(div(budget - 1, max(n, 1)), 1)
    for _ <- 1..n//1, do: term(share)
  end

  defp list(budget), do: children(budget)

  # Keys of distinct shapes, so no two keys of a map meet as one JSON key.
  defp map(budget) do
    children(budget)
    |> Enum.with_index()
    |> Map.new(fn {value, i} ->
      key =
        case :rand.uniform(4) do
          1 -> :"atom_key_#{i}"
          2 -> i
          _ -> "key_#{i}_" <> string()
        end

      {key, value}
    end)
  end

  defp improper_or_struct(budget) do
    case :rand.uniform(4) do
      1 -> [leaf() | leaf_not_list()]
      2 -> %Tagged{value: term(budget - 1)}
      3 -> URI.parse("https://example.com/a?b=1")
      4 -> Date.new!(2026, 12, 6)
    end
  end

  defp leaf_not_list do
    case leaf() do
      l when is_list(l) -> 1
      other -> other
    end
  end

  @doc "One leaf: numbers, strings (good and bad), atoms and opaque terms."
  @spec leaf() :: term()
  def leaf do
    case :rand.uniform(20) do
      1 -> :rand.uniform(1000) - 500
      2 -> Enum.random([0, -1, 9_007_199_254_740_993, 2 ** 63 - 1, -(2 ** 63), 2 ** 64 - 1])
      3 -> Enum.random([2 ** 64, -(2 ** 64) - 1, 10 ** 300, -(10 ** 999)])
      4 -> :rand.uniform() * :math.pow(10, :rand.uniform(600) - 300)
      5 -> Enum.random([0.0, -0.0, 1.0e-308, 5.0e-324, 1.7976931348623157e308, -2.5])
      6 -> Enum.random([nil, true, false])
      7 -> Enum.random([:nan, :infinity, :neg_infinity, :ok, :"an atom", :ünïcödé])
      n when n in 8..11 -> string()
      12 -> Enum.random(["", "\u0000", "\u{10FFFF}", "\u{FFFE}", "\\\"\n\t", "🐍" <> "\u200D"])
      13 -> Enum.random([<<0xFF>>, <<0xC0, 0x80>>, <<0xED, 0xA0, 0x80>>, <<"ok", 0xFE>>])
      14 -> Enum.random([<<1::3>>, <<255, 1::1>>])
      15 -> self()
      16 -> make_ref()
      17 -> fn -> :ok end
      18 -> Enum.random([[], %{}, {}])
      19 -> :binary.copy(<<"x">>, :rand.uniform(5000))
      20 -> <<:rand.uniform(255)>> |> :binary.copy(:rand.uniform(64))
    end
  end

  defp string do
    len = :rand.uniform(12) - 1

    for _ <- 1..len//1, into: "" do
      Enum.random([?a, ?Z, ?0, ?\s, ?", ?\\, ?/, 0x7F, 0xE9, 0x4E2D, 0x1F40D, 0xFFFD, 1])
      |> then(&<<&1::utf8>>)
    end
  end

  @doc "A map or list chain `depth` containers deep around `leaf`."
  @spec deep(pos_integer(), :map | :list | :tuple | :mixed, term()) :: term()
  def deep(depth, shape, leaf \\ 1) do
    Enum.reduce(1..depth, leaf, fn i, acc ->
      case shape do
        :map -> %{"d" => acc}
        :list -> [acc]
        :tuple -> {acc}
        :mixed -> if rem(i, 2) == 0, do: %{"d" => acc}, else: [acc]
      end
    end)
  end

  @doc """
  What `term` looks like after JSON and a Python worker: `{:ok, view}`;
  `:error` when it cannot travel (a pid, a ref, a fun, a bitstring, bytes
  that are not UTF-8, an improper list); `:unknown` when it holds a struct
  (whether one travels depends on its `JSON.Encoder`). Nesting and integer
  sizes are left to the caller's limits.
  """
  @spec json_view(term()) :: {:ok, term()} | :error | :unknown
  def json_view(term) do
    {:ok, view(term)}
  catch
    :unencodable -> :error
    :unknown -> :unknown
  end

  defp view(nil), do: nil
  defp view(b) when is_boolean(b), do: b
  defp view(a) when a in [:nan, :infinity, :neg_infinity], do: a
  defp view(a) when is_atom(a), do: Atom.to_string(a)
  defp view(n) when is_number(n), do: n

  defp view(b) when is_binary(b) do
    if String.valid?(b), do: b, else: throw(:unencodable)
  end

  defp view(t) when is_tuple(t), do: t |> Tuple.to_list() |> view()

  defp view(l) when is_list(l) do
    if proper?(l), do: Enum.map(l, &view/1), else: throw(:unencodable)
  end

  defp view(%_{}), do: throw(:unknown)

  defp view(m) when is_map(m) do
    Map.new(m, fn {k, v} -> {key(k), view(v)} end)
  end

  defp view(_other), do: throw(:unencodable)

  defp key(k) when is_binary(k), do: if(String.valid?(k), do: k, else: throw(:unencodable))
  defp key(k) when is_atom(k), do: Atom.to_string(k)
  defp key(k) when is_integer(k), do: Integer.to_string(k)
  defp key(_), do: throw(:unencodable)

  defp proper?([]), do: true
  defp proper?([_ | t]), do: proper?(t)
  defp proper?(_), do: false

  @doc "Nesting depth of a term (containers counted), without recursion."
  @spec depth(term()) :: non_neg_integer()
  def depth(term), do: depth([{term, 0}], 0)

  defp depth([], max), do: max

  defp depth([{t, d} | rest], max) do
    kids =
      cond do
        is_map(t) and not is_struct(t) -> Map.values(t)
        is_list(t) and t != [] -> if proper?(t), do: t, else: []
        is_tuple(t) -> Tuple.to_list(t)
        true -> nil
      end

    case kids do
      nil -> depth(rest, Kernel.max(max, d))
      kids -> depth(Enum.map(kids, &{&1, d + 1}) ++ rest, Kernel.max(max, d + 1))
    end
  end

  @doc "The largest number of decimal digits of any integer in the term."
  @spec max_digits(term()) :: non_neg_integer()
  def max_digits(term), do: digits([term], 0)

  defp digits([], max), do: max

  defp digits([t | rest], max) do
    cond do
      is_integer(t) -> digits(rest, Kernel.max(max, length(Integer.digits(abs(t)))))
      is_map(t) and not is_struct(t) -> digits(Map.keys(t) ++ Map.values(t) ++ rest, max)
      is_list(t) and t != [] and proper?(t) -> digits(t ++ rest, max)
      is_tuple(t) -> digits(Tuple.to_list(t) ++ rest, max)
      true -> digits(rest, max)
    end
  end
end
