defmodule Snakepit.ExamplesTest do
  # Every script in examples/ runs against a real pool of Python workers, as
  # `mix run examples/NAME.exs` would, and prints what it is about.
  # (telemetry_basic.exs has its own, closer test.)
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureIO

  alias Snakepit.Test.AppPool

  @dir Path.expand("../../examples", __DIR__)

  # example -> what its output must show
  @expected %{
    "quickstart" => ["ping", ~s("result" => 42), "session worker pids", "chunk"],
    "grpc_basic" => [
      ~s("status" => "pong"),
      ~s("result" => 42),
      "{:timeout,",
      "Snakepit.Error.ValueError"
    ],
    "grpc_sessions" => [
      "alice's program",
      "{:ok, %{weights: [1, 2, 3]}}",
      "bob cannot see it",
      "{:error, :not_found}"
    ],
    "grpc_streaming" => [~s("step" => 5), "chunks before :halt", "calls per worker pid"],
    "bidirectional_tools_demo" => [
      ~s("result" => "fruit: apple, pear"),
      "sha256",
      "another session cannot"
    ],
    "threaded_profile_demo" => ["threads: 8 calls of 100 ms on 1 worker(s)", "threads: 8,"],
    "pools_and_sessions" => ["workers per pool"],
    "hardware_detection" => ["recommended profile"],
    "crash_recovery" => [
      "Snakepit.Error.DeviceMismatch",
      "Snakepit.Error.KeyError: KeyError: 'labels'"
    ],
    "zero_copy" => ["shared regions left after close/1: 0"],
    "distributed_pools" => [
      "pools in the cluster",
      "6 calls with node: :any",
      "[0, 1, 2]",
      "workers: 3"
    ]
  }

  test "every example is listed here" do
    scripts = for f <- File.ls!(@dir), Path.extname(f) == ".exs", do: Path.rootname(f)
    assert Enum.sort(scripts) == Enum.sort(["telemetry_basic" | Map.keys(@expected)])
  end

  for {example, expected} <- @expected do
    test "examples/#{example}.exs runs and shows what it is about" do
      :ok = AppPool.start!(pool_size: 2)
      output = capture_io(fn -> Code.eval_file(Path.join(@dir, unquote(example) <> ".exs")) end)

      for text <- unquote(expected) do
        assert output =~ text,
               "examples/#{unquote(example)}.exs did not print #{inspect(text)}:\n#{output}"
      end
    end
  end
end
