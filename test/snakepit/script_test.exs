defmodule Snakepit.ScriptTest do
  # run_as_script in real, separate VMs: exit codes, cleanup, closed stdout.
  use ExUnit.Case, async: false
  @moduletag :python
  @moduletag timeout: 120_000

  alias Snakepit.Test.ExternalBeam

  # The script's own code after run_as_script shows which exit mode ran:
  # `:none` hands a raise to the script's rescue (RESCUED, then re-raised:
  # non-zero exit) and a value back to it (RESULT); `:halt` ends the VM
  # inside run_as_script, so neither marker is printed; `:stop` returns
  # `{:error, :stopping}` after a raise instead of raising.
  defp script(body, opts) do
    """
    Application.put_env(:snakepit, :pooling_enabled, true)
    Application.put_env(:snakepit, :pool_size, 2)
    Application.put_env(:snakepit, :data_dir, #{inspect(Application.get_env(:snakepit, :data_dir))})
    result =
      try do
        Snakepit.run_as_script(fn -> #{body} end, #{opts})
      rescue
        e ->
          IO.puts("RESCUED " <> Exception.message(e))
          reraise e, __STACKTRACE__
      end
    IO.puts("RESULT " <> inspect(result))
    """
  end

  @report_pids ~s|IO.puts("PIDS " <> Enum.join(Snakepit.Pool.ProcessRegistry.get_active_process_pids(), ","))|

  defp pids(output) do
    [line] = Regex.run(~r/PIDS ([\d,]+)/, output, capture: :all_but_first)
    line |> String.split(",") |> Enum.map(&String.to_integer/1)
  end

  test "returns the function's value, leaves no worker behind, exit status 0" do
    {out, 0} =
      ExternalBeam.run(
        script(~s|#{@report_pids}; {:ok, r} = Snakepit.execute("add", %{a: 1, b: 2}); r|, "[]")
      )

    assert out =~ ~s|RESULT %{"result" => 3}|
    # Two workers and the fork server they were forked from.
    assert length(pids(out)) == 3
    refute Enum.any?(pids(out), &Snakepit.ProcessKiller.process_alive?/1)
  end

  test "exit_mode :halt halts the VM inside run_as_script: 0 when the function returns, 1 when it raises" do
    {out, 0} = ExternalBeam.run(script(~s|IO.puts("RAN"); :ok|, "exit_mode: :halt"))
    assert out =~ "RAN"
    # Halted before the script's own code after run_as_script ran.
    refute out =~ "RESULT"

    {out, 1} = ExternalBeam.run(script(~s|#{@report_pids}; raise "boom"|, "exit_mode: :halt"))
    assert out =~ "boom"
    refute out =~ "RESCUED"
    refute out =~ "RESULT"
    refute Enum.any?(pids(out), &Snakepit.ProcessKiller.process_alive?/1)
  end

  test "the default exit mode returns the value and re-raises a raise to the script after cleanup" do
    {out, 0} = ExternalBeam.run(script(":done", "[]"))
    assert out =~ "RESULT :done"

    {out, status} = ExternalBeam.run(script(~s|#{@report_pids}; raise "kaboom"|, "[]"))
    assert status != 0
    # The raise reached the script's own rescue, after the workers were gone.
    assert out =~ "RESCUED kaboom"
    refute out =~ "RESULT"
    refute Enum.any?(pids(out), &Snakepit.ProcessKiller.process_alive?/1)
  end

  test "SNAKEPIT_SCRIPT_EXIT and SNAKEPIT_SCRIPT_HALT choose the exit" do
    {out, 1} = ExternalBeam.run(script(~s|raise "x"|, "[]"), [{"SNAKEPIT_SCRIPT_EXIT", "halt"}])
    refute out =~ "RESCUED"
    refute out =~ "RESULT"

    {out, 1} = ExternalBeam.run(script(~s|raise "x"|, "[]"), [{"SNAKEPIT_SCRIPT_HALT", "true"}])
    refute out =~ "RESCUED"
    refute out =~ "RESULT"

    # :stop reports the raise and stops the VM instead of raising to the script.
    {out, 1} = ExternalBeam.run(script(~s|raise "x"|, "[]"), [{"SNAKEPIT_SCRIPT_EXIT", "stop"}])
    refute out =~ "RESCUED"
    assert out =~ "RESULT {:error, :stopping}"

    # The option wins over the environment.
    {out, 0} =
      ExternalBeam.run(script(":done", "exit_mode: :none"), [{"SNAKEPIT_SCRIPT_EXIT", "halt"}])

    assert out =~ "RESULT :done"
  end

  test "a pool that cannot start returns an error, without hanging" do
    body = ":never"
    opts = ~s|timeout: 10_000|

    {out, 0} =
      ExternalBeam.run(
        "Application.put_env(:snakepit, :adapter_args, [\"--adapter\", \"nope_mod.Nope\"])\n" <>
          script(body, opts)
      )

    assert out =~ "RESULT {:error, %Snakepit.Error{"
    assert out =~ "nope_mod"
  end

  test "bad options are a validation error naming the option, and nothing runs" do
    me = self()

    assert {:error, %Snakepit.Error{category: :validation, message: message}} =
             Snakepit.run_as_script(fn -> send(me, :ran) end, exit_mode: :explode)

    assert message =~ ":exit_mode"

    assert {:error, %Snakepit.Error{category: :validation}} =
             Snakepit.run_as_script(fn -> send(me, :ran) end, :not_a_list)

    assert {:error, %Snakepit.Error{category: :validation}} = Snakepit.run_as_script(:not_a_fun)
    refute_received :ran
  end

  test "a closed stdout never hangs the exit" do
    elixir = System.find_executable("elixir")
    ebin = Path.join(:code.lib_dir(:snakepit), "ebin")
    code = script(~s|Enum.each(1..2000, fn i -> IO.puts("line \#{i}") end)|, "exit_mode: :halt")

    path =
      Path.join(
        System.tmp_dir!(),
        "snakepit_closed_stdout_#{System.unique_integer([:positive])}.exs"
      )

    File.write!(path, code)
    on_exit(fn -> File.rm(path) end)

    # `true` exits at once: the VM's stdout is a pipe nobody reads.
    task =
      Task.async(fn ->
        System.cmd("sh", ["-c", "#{elixir} -pa #{ebin} #{path} | true; echo done"],
          stderr_to_stdout: true
        )
      end)

    assert {:ok, {out, 0}} = Task.yield(task, 60_000) || Task.shutdown(task)
    assert out =~ "done"
  end
end
