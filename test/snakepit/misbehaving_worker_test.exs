defmodule Snakepit.MisbehavingWorkerTest do
  # A real worker that breaks the call lane's contract on purpose
  # (test/fixtures/python/misbehaving_adapter.py): every way gives the call
  # involved a structured error, never a crash, a hang or unbounded memory.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Error
  alias Snakepit.Test.AppPool

  @max_message_bytes 4 * 1024 * 1024
  @timeout 15_000

  setup_all do
    AppPool.start!(
      pool_size: 2,
      max_message_bytes: @max_message_bytes,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: ["--adapter", "misbehaving_adapter.MisbehavingAdapter"]
    )

    :ok
  end

  setup do
    assert AppPool.await_workers(2, timeout: 30_000) != :timeout
    :ok
  end

  defp sabotage(case_name) do
    started = System.monotonic_time(:millisecond)
    result = Snakepit.execute("sabotage", %{"case" => case_name}, timeout: @timeout)
    {result, System.monotonic_time(:millisecond) - started}
  end

  # Cases that only spoil the reply of their own call: the lane stays up.
  @reply_cases ~w(not_protobuf invalid_json deep_json deep_object not_utf8 over_max)
  # Cases after which nothing more on that lane can be trusted.
  @lane_cases ~w(truncated_header huge_prefix far_over_max close_mid_frame)

  for case_name <- @reply_cases do
    test "#{case_name}: a structured error for that call, at once" do
      memory = :erlang.memory(:total)
      {result, ms} = sabotage(unquote(case_name))

      assert {:error, %Error{category: category, message: message}} = result
      assert category != :timeout and message != "", inspect(result)
      assert ms < @timeout
      assert :erlang.memory(:total) - memory < 64 * 1024 * 1024
      assert {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{}, timeout: @timeout)
    end
  end

  for case_name <- @lane_cases do
    test "#{case_name}: the call fails with a structured error and the worker is replaced" do
      memory = :erlang.memory(:total)
      before = AppPool.worker_os_pids()
      {result, ms} = sabotage(unquote(case_name))

      assert {:error, %Error{category: category}} = result
      assert category != :timeout, inspect(result)
      assert ms < @timeout
      assert :erlang.memory(:total) - memory < 64 * 1024 * 1024
      # Replaced (one of the two), and the pool serves again.
      assert AppPool.wait_until(
               fn ->
                 pids = AppPool.worker_os_pids()
                 length(pids) == 2 and pids != before
               end,
               30_000
             ) != :timeout

      for _ <- 1..4, do: assert({:ok, _} = Snakepit.execute("ping", %{}, timeout: @timeout))
    end
  end

  # Well-framed messages the lane has no use for: a reply to no call,
  # chunks for a call that is not a stream, a kind this VM does not know
  # (newer workers may send more). Dropped; the call's own reply counts.
  for case_name <- ~w(unknown_call chunks_for_a_call unknown_kind) do
    test "#{case_name}: dropped, and the call completes" do
      assert {{:ok, %{"returned" => true}}, _ms} = sabotage(unquote(case_name))
    end
  end

  for case_name <- ~w(chunk_length_past_end chunk_not_protobuf chunk_deep_json) do
    test "a stream whose chunks are broken (#{case_name}) ends with a structured error" do
      parent = self()

      result =
        Snakepit.execute_stream(
          "sabotage_stream",
          %{"case" => unquote(case_name)},
          &send(parent, {:chunk, &1}),
          timeout: @timeout
        )

      assert {:error, %Error{category: category}} = result
      assert category != :timeout
      assert_received {:chunk, %{"n" => 0}}
      assert {:ok, _} = Snakepit.execute("ping", %{}, timeout: @timeout)
    end
  end

  test "an endless stream ends when its consumer halts, and memory stays bounded" do
    memory = :erlang.memory(:total)
    parent = self()

    assert :ok =
             Snakepit.execute_stream(
               "endless_chunks",
               %{"size" => 64 * 1024},
               fn %{"n" => n} ->
                 if n == 500 do
                   send(parent, :seen_500)
                   :halt
                 else
                   :ok
                 end
               end,
               timeout: 60_000
             )

    assert_received :seen_500
    assert :erlang.memory(:total) - memory < 128 * 1024 * 1024

    assert {:error, %Error{category: :timeout}} =
             Snakepit.execute_stream("endless_chunks", %{}, fn _ -> :ok end, timeout: 500)

    assert {:ok, _} = Snakepit.execute("ping", %{}, timeout: @timeout)
  end
end
