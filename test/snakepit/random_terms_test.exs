defmodule Snakepit.RandomTermsTest do
  # Thousands of random terms (test/support/random_term.ex) through every
  # way a term reaches a real Python worker and back: execute, sessions,
  # streams, the tool bridge both ways, zero-copy refs. Each must come back
  # as the JSON round trip says, or as a structured error; the VM stays up
  # and the same workers keep serving (none crashed or was replaced).
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 600_000

  alias Snakepit.Bridge.ToolRegistry
  alias Snakepit.Error
  alias Snakepit.Test.{AppPool, RandomTerm}

  @fixtures Path.expand("../fixtures/python", __DIR__)
  @session "random-terms"
  @call_opts [timeout: 60_000]

  # Below `@safe_depth` nesting and `@safe_digits` digits a term that can
  # travel must travel; past the upper bounds it must be refused. Between
  # them lie the documented limits, which their own tests pin down.
  @safe_depth 900
  @refused_depth 1_100
  @safe_digits 4_000

  setup_all do
    python_path = Enum.join([@fixtures | Snakepit.PythonRuntime.python_path()], ":")

    AppPool.start!(
      pool_size: 2,
      adapter_args: ["--adapter", "bridge_test_adapter.BridgeTestAdapter"],
      adapter_env: [{"PYTHONPATH", python_path}],
      zero_copy: [inline_below: 0]
    )

    assert AppPool.await_workers(2, timeout: 30_000) != :timeout

    :ok =
      ToolRegistry.register_elixir_tool(
        @session,
        "reply_with",
        fn params ->
          send(:persistent_term.get({__MODULE__, :listener}), {:bridge_saw, params})
          {:ok, :persistent_term.get({__MODULE__, :reply})}
        end,
        %{exposed_to_python: true}
      )

    :ok
  end

  setup do
    seed = RandomTerm.seed(ExUnit.configuration()[:seed] || 1)
    :persistent_term.put({__MODULE__, :listener}, self())
    {:ok, seed: seed, workers: AppPool.worker_os_pids()}
  end

  # The pool is the one the test began with: no worker crashed.
  defp assert_same_workers!(workers) do
    assert {:ok, _} = Snakepit.execute("ping", %{}, @call_opts)
    assert AppPool.worker_os_pids() == workers
  end

  defp expectation(term, wrappers \\ 1) do
    depth = RandomTerm.depth(term) + wrappers

    case RandomTerm.json_view(term) do
      _ when depth > @refused_depth ->
        :refused

      {:ok, view} ->
        if depth <= @safe_depth and RandomTerm.max_digits(term) <= @safe_digits,
          do: {:exact, view},
          else: :any

      :error ->
        :refused

      :unknown ->
        :any
    end
  end

  defp check!(result, expected, wrap, label) do
    case {expected, result} do
      {{:exact, view}, {:ok, got}} ->
        assert got == wrap.(view), "#{label}: the round trip changed the term"

      {{:exact, _}, other} ->
        flunk("#{label}: a term that can travel failed: #{inspect(other, limit: 20)}")

      {:refused, {:error, %Error{category: :validation}}} ->
        :ok

      {:refused, other} ->
        flunk("#{label}: expected a :validation error, got #{inspect(other, limit: 20)}")

      {:any, {:ok, _}} ->
        :ok

      {:any, {:error, %Error{}}} ->
        :ok

      {:any, other} ->
        flunk("#{label}: neither a result nor a structured error: #{inspect(other, limit: 20)}")
    end
  end

  defp label(seed, i, term),
    do: "seed #{seed}, term #{i} (#{inspect(term, limit: 8, printable_limit: 40)})"

  test "random terms through execute and a session's execute", %{seed: seed, workers: workers} do
    for i <- 1..2_000 do
      term = RandomTerm.term(:rand.uniform(60))
      expected = expectation(term)
      result = Snakepit.execute("echo", %{"v" => term}, @call_opts)
      check!(result, expected, &%{"v" => &1}, label(seed, i, term))

      if rem(i, 4) == 0 do
        result = Snakepit.execute_in_session(@session, "echo", %{"v" => term}, @call_opts)
        check!(result, expected, &%{"v" => &1}, "session: " <> label(seed, i, term))
      end
    end

    assert_same_workers!(workers)
  end

  test "random terms through streams", %{seed: seed, workers: workers} do
    for i <- 1..300 do
      term = RandomTerm.term(:rand.uniform(40))
      parent = self()

      result =
        Snakepit.execute_stream(
          "stream_echo",
          %{"value" => term, "n" => 2},
          &send(parent, {:chunk, &1}),
          @call_opts
        )

      case expectation(term, 2) do
        {:exact, view} ->
          assert result == :ok, label(seed, i, term)

          for n <- [0, 1] do
            assert_receive {:chunk, %{"i" => ^n, "v" => got}}
            assert got == view, label(seed, i, term)
          end

        :refused ->
          assert {:error, %Error{category: :validation}} = result, label(seed, i, term)

        :any ->
          assert result == :ok or match?({:error, %Error{}}, result), label(seed, i, term)
      end

      flush_chunks()
    end

    assert_same_workers!(workers)
  end

  defp flush_chunks do
    receive do
      {:chunk, _} -> flush_chunks()
    after
      0 -> :ok
    end
  end

  test "random terms through the tool bridge, both ways", %{seed: seed, workers: workers} do
    for i <- 1..300 do
      arg = RandomTerm.term(:rand.uniform(30))
      reply = RandomTerm.term(:rand.uniform(30))
      :persistent_term.put({__MODULE__, :reply}, reply)

      result =
        Snakepit.execute_in_session(
          @session,
          "bounce",
          %{"name" => "reply_with", "value" => arg},
          @call_opts
        )

      # Elixir -> Python (the argument), Python -> Elixir (the tool's
      # params), Elixir -> Python (the reply), Python -> Elixir (the result).
      case {expectation(arg, 2), expectation(reply, 2), result} do
        {{:exact, arg_view}, {:exact, reply_view}, _} ->
          assert_receive {:bridge_saw, %{"v" => ^arg_view}}
          assert result == {:ok, %{"result" => reply_view}}, label(seed, i, {arg, reply})

        {{:exact, arg_view}, :refused, _} ->
          # A reply JSON cannot hold is the tool's error in Python (a binary
          # that is not UTF-8 travels to Python as bytes, so it may arrive).
          assert_receive {:bridge_saw, %{"v" => ^arg_view}}
          assert {:ok, _} = result, label(seed, i, {arg, reply})

        {:refused, _, _} ->
          assert {:error, %Error{category: :validation}} = result, label(seed, i, {arg, reply})

        {_, _, {:ok, _}} ->
          :ok

        {_, _, other} ->
          assert {:error, %Error{}} = other, label(seed, i, {arg, reply})
      end

      receive do
        {:bridge_saw, _} -> :ok
      after
        0 -> :ok
      end
    end

    assert_same_workers!(workers)
  end

  test "deep terms each way: refused past the limit, never a crash", %{workers: workers} do
    for depth <- [10, 999, 1_000, 1_001, 5_000, 10_000, 100_000],
        shape <- [:map, :list, :tuple, :mixed] do
      term = RandomTerm.deep(depth, shape)
      label = "#{shape} #{depth} deep"

      check!(
        Snakepit.execute("echo", %{"v" => term}, @call_opts),
        expectation(term),
        &%{"v" => &1},
        label
      )
    end

    # A reply of an Elixir tool, deep (its encoding once ran on a dirty
    # scheduler's small stack).
    for depth <- [100, 330, 400, 5_000, 100_000] do
      :persistent_term.put({__MODULE__, :reply}, RandomTerm.deep(depth, :list))

      result =
        Snakepit.execute_in_session(@session, "bounce", %{"name" => "reply_with"}, @call_opts)

      case expectation(RandomTerm.deep(depth, :list), 2) do
        {:exact, view} -> assert result == {:ok, %{"result" => view}}, "reply #{depth} deep"
        _ -> assert {:ok, %{"error" => true}} = result, "reply #{depth} deep"
      end
    end

    assert_same_workers!(workers)
  end

  test "wide, huge and numeric edge cases", %{workers: workers} do
    wide_list = Enum.to_list(1..100_000)
    wide_map = Map.new(1..20_000, &{"k#{&1}", &1})
    text = :binary.copy("ü", 5 * 1024 * 1024)

    for term <- [wide_list, wide_map, text, 10 ** 3_999, -(10 ** 3_999)] do
      assert Snakepit.execute("echo", %{"v" => term}, @call_opts) == {:ok, %{"v" => term}}
    end

    # Past what any worker or the VM should take: structured errors.
    for term <- [2 ** 4_000_000, :binary.copy(<<0>>, 300 * 1024 * 1024)] do
      assert {:error, %Error{}} = Snakepit.execute("echo", %{"v" => term}, @call_opts)
    end

    assert_same_workers!(workers)
  end

  test "zero-copy refs inside random terms", %{seed: seed, workers: workers} do
    refs =
      for n <- [1, 100, 70_000] do
        {:ok, ref} = Snakepit.ZeroCopy.to_dlpack(:binary.copy(<<n::8>>, n), dtype: :uint8)
        ref
      end

    for i <- 1..200 do
      term = [Enum.random(refs), RandomTerm.term(:rand.uniform(20)), %{"r" => Enum.random(refs)}]
      result = Snakepit.execute("echo", %{"v" => term}, @call_opts)

      assert match?({:ok, _}, result) or match?({:error, %Error{}}, result),
             label(seed, i, term)
    end

    Enum.each(refs, &Snakepit.ZeroCopy.close/1)
    assert_same_workers!(workers)
  end
end
