defmodule Snakepit.Worker.OutputTest do
  use ExUnit.Case, async: true

  alias Snakepit.Worker.Output

  doctest Output

  test "any bytes become a printable, valid string no longer than the cap and its marker" do
    lines = [
      :crypto.strong_rand_bytes(100_000),
      <<0, 1, 2, 255, 254, 10, 13, 27>>,
      String.duplicate("é", 10_000),
      ""
    ]

    {formatter, config} = Logger.Formatter.new()

    for line <- lines do
      out = Output.printable(line)
      assert String.valid?(out)
      assert String.printable?(out)
      assert byte_size(out) <= Output.max_line_bytes() * 4 + 64
      # Logger's default formatter takes it.
      event = %{level: :debug, msg: {:string, out}, meta: %{}}
      assert is_binary(IO.iodata_to_binary(formatter.format(event, config)))
    end
  end

  test "a line cut in the middle of a character stays valid UTF-8" do
    line = String.duplicate("a", Output.max_line_bytes() - 1) <> "é" <> "tail"
    out = Output.printable(line)
    assert String.valid?(out)
    assert out =~ "more bytes cut"
  end

  test "at most lines_per_second lines are logged per second; the rest are counted" do
    state =
      Enum.reduce(1..(Output.lines_per_second() + 50), Output.new(), fn _, acc ->
        {_verdict, acc} = Output.admit(acc, 10_500)
        acc
      end)

    assert state.dropped == 50
    assert {:log, state} = Output.admit(state, 11_000)
    assert {true, state} = Output.schedule_report?(Output.dropped(state, 7))
    assert {false, state} = Output.schedule_report?(state)
    assert {57, state} = Output.take_report(state)
    assert {false, _} = Output.schedule_report?(state)
  end
end
