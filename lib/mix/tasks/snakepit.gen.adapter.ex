defmodule Mix.Tasks.Snakepit.Gen.Adapter do
  @shortdoc "Generate a Python adapter skeleton under priv/python"

  @moduledoc """
  Generates a Python adapter skeleton that runs as generated.

      mix snakepit.gen.adapter MyAdapter
      mix snakepit.gen.adapter my_adapter --path priv/python --force

  `NAME` may be given in Elixir style (`MyAdapter`) or Python style
  (`my_adapter`). It creates a Python package:

      priv/python/my_adapter/__init__.py   exports the class
      priv/python/my_adapter/adapter.py    class MyAdapter(BaseAdapter) with example tools

  Snakepit puts every loaded application's `priv/python` on the workers'
  `PYTHONPATH`, so the adapter is found without further setup; point a pool
  at it with:

      config :snakepit, adapter_args: ["--adapter", "my_adapter.MyAdapter"]

  The generated tools: `hello` (a plain tool), `add` (typed parameters),
  `count` (a streaming tool) and `call_elixir` (calls an Elixir tool through
  the bridge). `initialize/0` and `cleanup/0` show where to load and release
  resources.

  Options:
    * `--path DIR` - where the package goes (default `priv/python`)
    * `--force` - overwrite existing files
  """
  use Mix.Task

  @switches [path: :string, force: :boolean]

  @impl true
  def run(argv) do
    case OptionParser.parse(argv, strict: @switches) do
      {opts, [name], []} ->
        generate(name, opts)

      {_opts, _args, [{bad, _} | _]} ->
        Mix.raise(
          "unknown option #{bad}; usage: mix snakepit.gen.adapter NAME [--path DIR] [--force]"
        )

      _ ->
        Mix.raise("usage: mix snakepit.gen.adapter NAME [--path DIR] [--force]")
    end
  end

  @doc """
  The Python module and class names for `name`: `"MyAdapter"` and
  `"my_adapter"` both give `{"my_adapter", "MyAdapter"}`. Raises
  `Mix.Error` for a name Python cannot import.
  """
  @spec names(String.t()) :: {String.t(), String.t()}
  def names(name) do
    module = Macro.underscore(name)

    unless module =~ ~r/^[a-z][a-z0-9_]*$/ and name =~ ~r/^[A-Za-z][A-Za-z0-9_]*$/ do
      Mix.raise(
        "adapter name #{inspect(name)} must be a letter followed by letters, digits or underscores"
      )
    end

    {module, Macro.camelize(module)}
  end

  defp generate(name, opts) do
    {module, class} = names(name)
    dir = Path.join(Keyword.get(opts, :path, "priv/python"), module)

    files = [
      {Path.join(dir, "__init__.py"), init_py(module, class)},
      {Path.join(dir, "adapter.py"), adapter_py(class)}
    ]

    existing = for {path, _} <- files, File.exists?(path), do: path

    if existing != [] and not Keyword.get(opts, :force, false) do
      Mix.raise("#{Enum.join(existing, ", ")} already exists; use --force to overwrite")
    end

    File.mkdir_p!(dir)

    for {path, content} <- files do
      File.write!(path, content)
      Mix.shell().info("* creating #{path}")
    end

    Mix.shell().info("""

    Use it in a pool:

        config :snakepit, adapter_args: ["--adapter", "#{module}.#{class}"]

    Its directory must be on the workers' PYTHONPATH: every loaded
    application's priv/python is; for another place add
    config :snakepit, python_path: ["#{Path.dirname(dir)}"].
    """)

    :ok
  end

  defp init_py(module, class) do
    """
    \"\"\"The #{class} Snakepit adapter (package #{module}).\"\"\"

    from .adapter import #{class}

    __all__ = ["#{class}"]
    """
  end

  defp adapter_py(class) do
    """
    \"\"\"#{class}: a Snakepit adapter.

    Every method marked with @tool can be called from Elixir:

        Snakepit.execute("hello", %{name: "Ada"})
        Snakepit.execute_stream("count", %{n: 3}, fn chunk -> IO.inspect(chunk) end)

    Arguments are matched to parameters by name. A tool that yields is a
    streaming tool. Exceptions come back to Elixir as structs, e.g.
    {:error, %Snakepit.Error.ValueError{}}.
    \"\"\"

    from __future__ import annotations

    from typing import Any, Iterator

    from snakepit_bridge import BaseAdapter, tool


    class #{class}(BaseAdapter):
        \"\"\"Example tools; replace them with your own.\"\"\"

        def __init__(self) -> None:
            super().__init__()
            self.greeting = "Hello"

        async def initialize(self) -> None:
            \"\"\"Runs once in each worker before its first call: load models here.\"\"\"

        async def cleanup(self) -> None:
            \"\"\"Runs once when the worker shuts down: release resources here.\"\"\"

        @tool(description="Greet someone")
        def hello(self, name: str = "world") -> dict[str, Any]:
            return {"message": f"{self.greeting}, {name}!"}

        @tool
        def add(self, a: float, b: float) -> dict[str, Any]:
            \"\"\"Add two numbers.

            Args:
                a: the first number.
                b: the second number.
            \"\"\"
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                raise ValueError("a and b must be numbers")
            return {"result": a + b}

        @tool(description="Stream the numbers 1..n")
        def count(self, n: int = 3) -> Iterator[dict[str, Any]]:
            for i in range(1, int(n) + 1):
                yield {"number": i, "of": int(n)}

        @tool(description="Call an Elixir tool registered with exposed_to_python: true")
        def call_elixir(self, tool_name: str, params: dict | None = None) -> Any:
            return self.session_context.call_elixir_tool(tool_name, params or {})
    """
  end
end
