defmodule Snakepit.HouseTest do
  # The shape of the code base that keeps it easy to see and to change:
  # files of a readable size, few files at the top of lib/snakepit, and
  # module names that say where their file is (or an exception, listed
  # with its reason in docs/architecture.md).
  use ExUnit.Case, async: true

  @root Path.expand("../..", __DIR__)

  defp files(pattern), do: Path.wildcard(Path.join(@root, pattern))

  # As `wc -l` counts them.
  defp lines(path), do: path |> File.read!() |> String.split("\n") |> length() |> Kernel.-(1)

  defp relative(path), do: Path.relative_to(path, @root)

  test "no hand-written Elixir or Python file over 600 lines, no Rust file over 500" do
    python =
      files("python/snakepit_bridge/**/*.py")
      |> Enum.reject(&String.contains?(&1, "/generated/"))

    too_long =
      for {paths, limit} <- [
            {files("lib/**/*.ex") ++ files("mix_native.exs"), 600},
            {python, 600},
            {files("native/*/src/**/*.rs"), 500}
          ],
          path <- paths,
          (n = lines(path)) > limit,
          do: "#{relative(path)}: #{n} lines (limit #{limit})"

    assert too_long == []
  end

  test "at most 16 files directly in lib/snakepit" do
    top = files("lib/snakepit/*.ex")
    assert length(top) <= 16, Enum.map_join(top, "\n", &relative/1)
  end

  # A file's own module: lib/snakepit/pool/server.ex holds Snakepit.Pool.Server.
  defp expected_module(path) do
    path
    |> Path.relative_to(Path.join(@root, "lib"))
    |> Path.rootname()
    |> Path.split()
    |> Enum.map_join(".", &Macro.camelize/1)
  end

  # Top-level modules only (a module defined inside another is its part).
  defp modules(path) do
    Regex.scan(~r/^defmodule ([\w.]+) do/m, File.read!(path), capture: :all_but_first)
    |> List.flatten()
  end

  defp same?(module, expected),
    do: String.downcase(module) == String.downcase(expected)

  # A module that extends the name of its file's module is a part of it.
  defp part_of?(module, expected),
    do: String.starts_with?(String.downcase(module), String.downcase(expected) <> ".")

  # Modules whose name is not their path's: in a file named after another
  # module (a helper kept beside the module it serves counts when its name
  # extends that module's name), or at a path their name does not suggest.
  defp mismatches do
    for path <- files("lib/**/*.ex"),
        expected = expected_module(path),
        module <- modules(path),
        not same?(module, expected),
        not part_of?(module, expected),
        do: {module, relative(path)}
  end

  # The exceptions table of docs/architecture.md: | `Module` | `path` | reason |
  defp listed_exceptions do
    doc = File.read!(Path.join(@root, "docs/architecture.md"))

    for [module, path, reason] <-
          Regex.scan(~r/^\| `([\w.]+)` \| `([\w\/.]+)` \| ([^|]+) \|$/m, doc,
            capture: :all_but_first
          ),
        into: %{},
        do: {{module, path}, String.trim(reason)}
  end

  test "every module's name matches its path, or is a listed exception with a reason" do
    listed = listed_exceptions()
    actual = mismatches()

    unlisted = for m <- actual, not Map.has_key?(listed, m), do: m
    assert unlisted == [], "not in docs/architecture.md's exceptions: #{inspect(unlisted)}"

    stale = for {m, _} <- listed, m not in actual, do: m
    assert stale == [], "listed as exceptions but no longer are: #{inspect(stale)}"

    assert Enum.all?(listed, fn {_, reason} -> String.length(reason) > 10 end)
  end
end
