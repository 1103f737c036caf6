defmodule Mix.Tasks.Snakepit.PythonTestTest do
  # Real pytest runs with Snakepit's interpreter over a temporary test
  # directory: one passing, one failing, and arguments passed through.
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureIO

  setup do
    dir = Path.join(System.tmp_dir!(), "snakepit-pytest-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)

    File.write!(Path.join(dir, "test_ok.py"), """
    import snakepit_bridge
    from snakepit_bridge import BaseAdapter, tool

    def test_bridge_is_importable():
        assert hasattr(snakepit_bridge, "__file__") and BaseAdapter and tool
    """)

    %{dir: dir}
  end

  defp run_task(args) do
    Mix.Task.reenable("snakepit.python_test")

    output =
      capture_io(fn ->
        result =
          try do
            Mix.Task.run("snakepit.python_test", args)
          catch
            :exit, reason -> {:exit, reason}
          end

        send(self(), {:result, result})
      end)

    assert_received {:result, result}
    {result, output}
  end

  test "a passing suite exits normally, with the bridge importable (after the bootstrap)", %{
    dir: dir
  } do
    # The bootstrap finds the project's environment complete: it only checks.
    {result, output} = run_task(["--path", dir])
    assert result == :ok
    assert output =~ "Python environment is ready" and output =~ "1 passed"
  end

  test "a failing test makes the task exit with pytest's status; -- passes arguments", %{dir: dir} do
    File.write!(Path.join(dir, "test_bad.py"), "def test_fails():\n    assert 1 == 2\n")
    {result, output} = run_task(["--no-bootstrap", "--path", dir])
    assert result == {:exit, {:shutdown, 1}}
    assert output =~ "1 failed" and output =~ "1 passed"

    # -k selects only the passing test.
    {result, output} = run_task(["--no-bootstrap", "--path", dir, "--", "-k", "bridge", "-q"])
    assert result == :ok
    assert output =~ "1 passed" and output =~ "deselected"
  end

  test "a missing test directory is a clear error" do
    Mix.Task.reenable("snakepit.python_test")

    assert_raise Mix.Error, ~r/no Python tests at .*nowhere/, fn ->
      Mix.Task.run("snakepit.python_test", ["--no-bootstrap", "--path", "/nowhere"])
    end
  end
end
