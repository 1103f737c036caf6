defmodule Snakepit.DocFiguresTest do
  # The benchmark figures quoted in README.md and docs/*.md, in passages
  # marked <!-- figures: bench/results/... -->, are in the results files
  # they cite (scripts/check_doc_figures.exs).
  use ExUnit.Case, async: true

  @script Path.expand("../../scripts/check_doc_figures.exs", __DIR__)

  defp check(args) do
    System.cmd(System.find_executable("elixir"), [@script | args], stderr_to_stdout: true)
  end

  test "every figure the docs quote is in the committed results they cite" do
    {output, status} = check([])
    assert status == 0, output
    # The docs do mark their figures (a check of nothing would pass).
    [_, n] = Regex.run(~r/(\d+) passage\(s\) with figures/, output)
    assert String.to_integer(n) >= 10, output
  end

  @tag :tmp_dir
  test "a stale figure, a missing results file or an open passage fails", %{tmp_dir: dir} do
    File.mkdir_p!(Path.join(dir, "docs"))
    File.mkdir_p!(Path.join(dir, "bench/results"))
    File.write!(Path.join(dir, "bench/results/startup.txt"), "16 workers  all ready 409 ms\n")

    doc = fn text -> File.write!(Path.join(dir, "docs/startup.md"), text) end

    # As printed, rounded, and ms quoted as s: all found.
    doc.(
      "<!-- figures: bench/results/startup.txt -->\n16 workers: 0.41 s (409 ms)\n<!-- /figures -->\n"
    )

    assert {_, 0} = check(["--root", dir])

    # A figure from an older run is not.
    doc.(
      "intro 7\n<!-- figures: bench/results/startup.txt -->\n| 16 | 0.90 s |\n<!-- /figures -->\n"
    )

    {output, 1} = check(["--root", dir])
    assert output =~ "docs/startup.md:3: 0.90 is not in bench/results/startup.txt"
    # Numbers outside a marked passage are not figures.
    refute output =~ ": 7 is not"

    doc.("<!-- figures: bench/results/gone.txt -->\n1\n<!-- /figures -->\n")
    {output, 1} = check(["--root", dir])
    assert output =~ "cites bench/results/gone.txt, which does not exist"

    doc.("<!-- figures: bench/results/startup.txt -->\n409 ms\n")
    {output, 1} = check(["--root", dir])
    assert output =~ "not closed"
  end
end
