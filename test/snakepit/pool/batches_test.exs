defmodule Snakepit.Pool.BatchesTest do
  # The batcher's decisions as pure functions: when a batch leaves, what it
  # takes, which items it drops; and how a batch reply is split.
  use ExUnit.Case, async: true
  doctest Snakepit.Pool.Batching

  alias Snakepit.Pool.{Batches, Batching}

  @key {:default, "embed"}
  @config %{max_batch_size: 3, max_batch_delay_ms: 5}

  defp item(tag, deadline \\ :infinity), do: {tag, %{"x" => tag}, nil, false, deadline}

  test "the first item opens a batch and arms its delay; the size sends it" do
    {actions, s} = Batches.add(Batches.new(), @key, @config, item(1, 100), 0)
    assert actions == [{:arm, 0, 5}]
    {[], s} = Batches.add(s, @key, @config, item(2, 300), 1)
    {actions, s} = Batches.add(s, @key, @config, item(3, 200), 2)
    assert actions == [{:run, 0, @key, 300}]

    # A full batch takes no more: the next item opens another.
    {[{:arm, 1, 5}], s} = Batches.add(s, @key, @config, item(4), 3)
    assert {:ok, batch, live, [], s} = Batches.take(s, 0, 0)
    assert batch.reason == :full and Enum.map(live, &elem(&1, 0)) == [1, 2, 3]
    assert Batches.size(s) == 1
    assert Batches.take(s, 0, 0) == :error
  end

  test "the delay sends a batch, which keeps taking items until it is taken" do
    {_, s} = Batches.add(Batches.new(), @key, @config, item(1, 50), 0)
    {actions, s} = Batches.due(s, 0)
    assert actions == [{:run, 0, @key, 50}]
    # Its timer again, or a second due: nothing more.
    assert {[], ^s} = Batches.due(s, 0)
    {[], s} = Batches.add(s, @key, @config, item(2, 80), 1)
    # Full while its runner waits: no second runner.
    {[], s} = Batches.add(s, @key, @config, item(3), 2)
    {[{:arm, 1, 5}], s} = Batches.add(s, @key, @config, item(4), 3)

    # Items whose deadline passed are split off at take.
    assert {:ok, %{reason: :delay}, live, expired, _} = Batches.take(s, 0, 60)
    assert Enum.map(live, &elem(&1, 0)) == [2, 3]
    assert Enum.map(expired, &elem(&1, 0)) == [1]
  end

  test "a delay of 0 sends at once; keys batch apart" do
    config = %{max_batch_size: 10, max_batch_delay_ms: 0}
    {[{:run, 0, @key, :infinity}], s} = Batches.add(Batches.new(), @key, config, item(1), 0)
    {[], s} = Batches.add(s, @key, config, item(2), 0)
    other = {:default, "other"}
    {[{:run, 1, ^other, 5}], s} = Batches.add(s, other, config, item(3, 5), 0)
    assert {:ok, _, [_, _], [], s} = Batches.take(s, 0, 0)
    assert {:ok, _, [_], [], _} = Batches.take(s, 1, 0)
  end

  test "config_of reads only sane settings" do
    assert Batching.config_of(%{"batch" => "true"}) ==
             %{max_batch_size: 64, max_batch_delay_ms: 2}

    assert Batching.config_of(%{
             "batch" => "true",
             "max_batch_size" => "5",
             "max_batch_delay_ms" => "0"
           }) ==
             %{max_batch_size: 5, max_batch_delay_ms: 0}

    for bad <- [
          %{"max_batch_size" => "0"},
          %{"max_batch_size" => "x"},
          %{"max_batch_delay_ms" => "-1"}
        ] do
      assert Batching.config_of(Map.put(bad, "batch", "true")) == nil
    end

    assert Batching.config_of(%{"batch" => "false"}) == nil
    assert Batching.config_of(nil) == nil
  end

  test "a reply is split into each item's result, error or bytes" do
    worker = %{id: "w1"}
    items = [item(:a), item(:b), item(:c)]

    reply =
      {:ok,
       %{
         "ok" => [1, nil, nil],
         "errors" => [[1, "ValueError", "bad", "tb", "tool"]],
         "bytes" => [[2, Base.encode64(<<0, 1>>)]]
       }}

    assert [{:a, {:ok, 1}}, {:b, {:error, %Snakepit.Error.ValueError{message: "bad"}}}, c] =
             Batching.split(reply, items, "embed", worker)

    assert c == {:c, {:ok, <<0, 1>>}}

    plain = {:ok, %{"ok" => [1, 2, 3], "errors" => [], "bytes" => []}}

    assert Batching.split(plain, items, "embed", worker) == [
             a: {:ok, 1},
             b: {:ok, 2},
             c: {:ok, 3}
           ]

    # A wrong count, or a whole failure, is every item's error.
    for bad <- [{:ok, %{"ok" => [1], "errors" => [], "bytes" => []}}, {:ok, [1, 2, 3]}] do
      for {_, {:error, error}} <- Batching.split(bad, items, "embed", worker),
          do: assert(error.category == :worker)
    end

    failed = {:error, Snakepit.Error.timeout_error("late")}
    assert [a: ^failed, b: ^failed, c: ^failed] = Batching.split(failed, items, "embed", worker)
  end
end
