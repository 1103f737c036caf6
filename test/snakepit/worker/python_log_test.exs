defmodule Snakepit.Worker.PythonLogTest do
  # What a real worker's Python says reaches Elixir's Logger at the mapped
  # level with its metadata: logging records, print, raw stderr, warnings
  # and a thread's uncaught traceback.
  use ExUnit.Case, async: false
  @moduletag :python

  alias Snakepit.Test.AppPool
  alias Snakepit.Worker.PythonLog

  defmodule Forward do
    @moduledoc false
    # An OTP logger handler sending each event to the test.
    def log(%{level: level, msg: msg, meta: meta}, %{config: %{pid: pid}}) do
      text =
        case msg do
          {:string, s} -> IO.chardata_to_string(s)
          {:report, r} -> inspect(r)
          {format, args} -> IO.chardata_to_string(:io_lib.format(format, args))
        end

      send(pid, {:logged, level, text, meta})
    end
  end

  defp start!(level) do
    AppPool.start!(
      pool_size: 1,
      python_path: [AppPool.fixtures_dir()],
      adapter_args: AppPool.fixture_adapter("ShowcaseTestAdapter"),
      python_log_level: level
    )

    on_exit(fn -> Application.delete_env(:snakepit, :python_log_level) end)
    _ = :logger.remove_handler(:python_log_test)
    :ok = :logger.add_handler(:python_log_test, Forward, %{config: %{pid: self()}})
    on_exit(fn -> :logger.remove_handler(:python_log_test) end)
  end

  # Every event that mentions `tag`, until a quiet moment after the last.
  defp heard(tag, acc \\ []) do
    receive do
      {:logged, level, text, meta} ->
        if text =~ tag, do: heard(tag, [{level, text, meta} | acc]), else: heard(tag, acc)
    after
      500 -> Enum.reverse(acc)
    end
  end

  defp find(events, words), do: Enum.find(events, fn {_, text, _} -> text =~ words end)

  test "every channel at its level, with the call's metadata" do
    start!(:debug)
    tag = "tag#{System.unique_integer([:positive])}"
    cid = "cid-#{tag}"

    assert {:ok, %{"said" => ^tag}} =
             Snakepit.execute("say_everything", %{tag: tag}, correlation_id: cid)

    events = heard(tag)

    for {words, level} <- [
          {"debug #{tag}", :debug},
          {"info #{tag}", :info},
          {"warning #{tag}", :warning},
          {"error #{tag}", :error},
          {"critical #{tag}", :error},
          {"caught #{tag}", :error}
        ] do
      assert {^level, text, meta} = find(events, words), "#{words}: #{inspect(events)}"
      assert text =~ "tests.say"
      assert meta[:python_logger] == "tests.say"
      assert meta[:correlation_id] == cid
      assert meta[:worker_id] =~ "default_worker_"
      assert meta[:pool] == :default
      assert meta[:python_file] =~ "pool_adapters.py" and is_integer(meta[:python_line])
    end

    # The exception's traceback travels with its record.
    {_, caught, _} = find(events, "caught #{tag}")
    assert caught =~ "\nTraceback (most recent call last):\n"
    assert caught =~ "ValueError: boom #{tag}"

    assert {:warning, _, %{python_logger: "py.warnings"}} = find(events, "careful #{tag}")
    assert {:info, _, %{python_stream: :stdout}} = find(events, "printed #{tag}")
    assert {:warning, _, %{python_stream: :stderr}} = find(events, "raw stderr #{tag}")
    assert {:warning, _, %{python_stream: :stderr}} = find(events, "RuntimeError: thread #{tag}")
  end

  test "python_log_level bounds what is sent; :none sends no record" do
    start!(:warning)
    tag = "tag#{System.unique_integer([:positive])}"
    assert {:ok, _} = Snakepit.execute("say_everything", %{tag: tag})
    events = heard(tag)
    refute find(events, "debug #{tag}")
    refute find(events, "info #{tag}")
    assert {:warning, _, _} = find(events, "warning #{tag}")

    start!(:none)
    tag = "tag#{System.unique_integer([:positive])}"
    assert {:ok, _} = Snakepit.execute("say_everything", %{tag: tag})
    events = heard(tag)
    refute Enum.any?(events, fn {_, _, meta} -> meta[:python_logger] end)
    # Plain output is still heard.
    assert find(events, "printed #{tag}")
  end

  test "a line that only looks like a record is logged as it is" do
    assert {:warning, "[w1] SNAKEPIT_LOG {not json", meta} =
             PythonLog.entry(:stderr, "SNAKEPIT_LOG {not json", "w1", :p)

    assert meta[:python_stream] == :stderr

    assert {:error, "[w1] x: m", meta} =
             PythonLog.entry(
               :stderr,
               ~s(SNAKEPIT_LOG {"level":"CRITICAL","logger":"x","message":"m","line":"7"}),
               "w1",
               :p
             )

    assert meta[:python_line] == nil
  end
end
