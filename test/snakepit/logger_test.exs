defmodule Snakepit.LoggerTest do
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Logger, as: SLog

  setup do
    saved =
      {Application.fetch_env(:snakepit, :log_level),
       Application.fetch_env(:snakepit, :log_categories)}

    Application.delete_env(:snakepit, :log_level)
    Application.delete_env(:snakepit, :log_categories)

    on_exit(fn ->
      {level, categories} = saved
      restore(:log_level, level)
      restore(:log_categories, categories)
    end)

    SLog.clear_process_level()
    :ok
  end

  defp restore(key, {:ok, v}), do: Application.put_env(:snakepit, key, v)
  defp restore(key, :error), do: Application.delete_env(:snakepit, key)

  defp logged(fun), do: capture_log([level: :debug], fun)

  test "silent by default: only errors pass" do
    assert SLog.get_process_level() == :error
    assert logged(fn -> SLog.info(:pool, "an info") end) == ""
    assert logged(fn -> SLog.warning(:pool, "a warning") end) == ""
    assert logged(fn -> SLog.error(:pool, "an error") end) =~ "an error"
  end

  test "the configured level opens lower levels, :none closes everything" do
    Application.put_env(:snakepit, :log_level, :debug)
    assert logged(fn -> SLog.debug("dbg") end) =~ "dbg"
    Application.put_env(:snakepit, :log_level, :none)
    assert logged(fn -> SLog.error("err") end) == ""
    refute SLog.should_log?(:error)
  end

  test "categories filter everything but errors" do
    Application.put_env(:snakepit, :log_level, :debug)
    Application.put_env(:snakepit, :log_categories, [:grpc])
    assert SLog.should_log?(:debug, :grpc)
    refute SLog.should_log?(:debug, :pool)
    assert SLog.should_log?(:error, :pool)
    assert logged(fn -> SLog.info(:pool, "pool info") end) == ""
    assert logged(fn -> SLog.info(:grpc, "grpc info") end) =~ "grpc info"
  end

  test "a process level overrides the config for this process only" do
    SLog.set_process_level(:debug)
    assert SLog.should_log?(:debug)
    other = Task.async(fn -> SLog.should_log?(:debug) end) |> Task.await()
    refute other
    SLog.clear_process_level()
    refute SLog.should_log?(:debug)
  end

  test "with_level restores the previous level, also after a raise" do
    SLog.set_process_level(:warning)
    assert SLog.with_level(:debug, fn -> SLog.get_process_level() end) == :debug
    assert SLog.get_process_level() == :warning

    assert_raise RuntimeError, fn -> SLog.with_level(:none, fn -> raise "boom" end) end
    assert SLog.get_process_level() == :warning
  end

  test "Elixir's process level is used when no override is set" do
    Logger.put_process_level(self(), :info)
    on_exit(fn -> Logger.delete_process_level(self()) end)
    assert SLog.get_process_level() == :info
    Logger.delete_process_level(self())
  end

  test "lazy messages are only built when logged" do
    assert logged(fn -> SLog.debug(:pool, fn -> raise "never built" end) end) == ""
  end
end
