# Checks that the benchmark figures the docs quote are in the committed
# results they cite.
#
#     elixir scripts/check_doc_figures.exs              # this repository
#     elixir scripts/check_doc_figures.exs --root DIR   # another tree (tests)
#
# In README.md and docs/*.md, a passage that quotes benchmark figures sits
# between two HTML comments (invisible when rendered), the first naming the
# results file(s) it quotes:
#
#     <!-- figures: bench/results/startup.txt -->
#     | workers | one batch | ... |
#     <!-- /figures -->
#
# Every number in the passage (link targets and the markers left out) must
# be one of the numbers in those files, as printed or rounded to the
# decimals the docs give it, directly or converted by a factor of 1000
# (ms quoted as s, us as ms): "0.41 s" matches "409 ms", "7.5x" matches
# "7.46x". Ranges are two numbers, each checked. A figure not found, a
# cited file that does not exist or a passage left open fails the check.
#
# Run by test/docs/doc_figures_test.exs (so by `mix test` and `make test`).
# Reads files only; prints each passage it checked and what failed.

defmodule DocFigures do
  @open ~r/^\s*<!--\s*figures:\s*(.+?)\s*-->\s*$/
  @close ~r/^\s*<!--\s*\/figures\s*-->\s*$/
  @number ~r/\d+(?:\.\d+)?/

  def main(argv) do
    {opts, _, _} = OptionParser.parse(argv, strict: [root: :string])
    root = Path.expand(opts[:root] || Path.join(__DIR__, ".."))
    docs = Enum.filter([Path.join(root, "README.md")], &File.exists?/1)
    docs = docs ++ Enum.sort(Path.wildcard(Path.join(root, "docs/*.md")))

    {passages, errors} =
      Enum.reduce(docs, {0, []}, fn doc, {n, errors} ->
        {found, errs} = check_doc(root, doc)
        {n + found, errors ++ errs}
      end)

    IO.puts("check_doc_figures: #{passages} passage(s) with figures in #{length(docs)} file(s)")

    if errors == [] do
      IO.puts("check_doc_figures: every figure is in the results it cites")
    else
      Enum.each(errors, &IO.puts("check_doc_figures: " <> &1))
      System.halt(1)
    end
  end

  defp check_doc(root, doc) do
    rel = Path.relative_to(doc, root)

    {passages, open} =
      doc
      |> File.read!()
      |> String.split("\n")
      |> Enum.with_index(1)
      |> Enum.reduce({[], nil}, fn {line, no}, {done, open} ->
        cond do
          open == nil and Regex.match?(@open, line) ->
            [_, cited] = Regex.run(@open, line)
            {done, {no, String.split(cited, ~r/[\s,]+/, trim: true), []}}

          open != nil and Regex.match?(@close, line) ->
            {start, cited, lines} = open
            {[{start, cited, Enum.reverse(lines)} | done], nil}

          open != nil ->
            {start, cited, lines} = open
            {done, {start, cited, [{no, line} | lines]}}

          true ->
            {done, nil}
        end
      end)

    unclosed =
      case open do
        nil ->
          []

        {start, _, _} ->
          ["#{rel}:#{start}: a figures passage is not closed with <!-- /figures -->"]
      end

    errors =
      passages
      |> Enum.reverse()
      |> Enum.flat_map(fn passage -> check_passage(root, rel, passage) end)

    {length(passages), unclosed ++ errors}
  end

  defp check_passage(root, rel, {start, cited, lines}) do
    missing = Enum.reject(cited, &File.regular?(Path.join(root, &1)))

    if missing != [] do
      ["#{rel}:#{start}: cites #{Enum.join(missing, ", ")}, which does not exist"]
    else
      known =
        cited
        |> Enum.flat_map(&numbers(File.read!(Path.join(root, &1))))
        |> Enum.map(&elem(&1, 0))

      figures =
        for {no, line} <- lines,
            {value, decimals} <- numbers(strip(line)),
            do: {no, value, decimals}

      IO.puts("  #{rel}:#{start}: #{length(figures)} figure(s) from #{Enum.join(cited, ", ")}")

      for {no, value, decimals} <- figures,
          not Enum.any?(known, &matches?(&1, value, decimals)) do
        "#{rel}:#{no}: #{format(value, decimals)} is not in #{Enum.join(cited, ", ")}"
      end
    end
  end

  # Link targets name files, not figures.
  defp strip(line), do: Regex.replace(~r/\]\([^)]*\)/, line, "]")

  defp numbers(text) do
    for [token] <- Regex.scan(@number, text) do
      decimals =
        case String.split(token, ".") do
          [_, frac] -> byte_size(frac)
          [_] -> 0
        end

      {elem(Float.parse(token), 0), decimals}
    end
  end

  defp matches?(known, value, decimals) do
    tolerance = 0.5 * :math.pow(10, -decimals) + 1.0e-9
    Enum.any?([known, known / 1000], &(abs(&1 - value) <= tolerance))
  end

  defp format(value, 0), do: Integer.to_string(trunc(value))
  defp format(value, decimals), do: :erlang.float_to_binary(value, decimals: decimals)
end

DocFigures.main(System.argv())
