# The native build step lives beside this file so that it is available before
# the project itself compiles, also when Snakepit is a path dependency.
Code.require_file("mix_native.exs", __DIR__)

defmodule Snakepit.MixProject do
  use Mix.Project

  @version "0.13.0"

  def project do
    [
      app: :snakepit,
      version: @version,
      elixir: "~> 1.18",
      start_permanent: Mix.env() == :prod,
      compilers: [:snakepit_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      test_coverage: [summary: [threshold: 0]],
      description: "Pools of Python workers for Elixir, with a Rust native core",
      package: [licenses: ["MIT"], files: ~w(lib native proto python priv mix.exs mix_native.exs
        Cargo.toml Cargo.lock README.md LICENSE CHANGELOG.md)],
      docs: [main: "readme", extras: ["README.md", "CHANGELOG.md"]]
    ]
  end

  def application do
    [
      mod: {Snakepit.Application, []},
      extra_applications: [:logger, :crypto]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
