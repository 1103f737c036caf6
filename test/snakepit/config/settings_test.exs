defmodule Snakepit.Config.SettingsTest do
  # The one table of global settings: its defaults obey its own types, a
  # value of the wrong type stops the start with a message naming the key,
  # and a key no table knows is named in a warning once per VM.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Config.Settings

  doctest Settings

  test "every default the table gives has the type the table gives" do
    for {name, _keys, default, type, _doc} <- Settings.entries(),
        default != :computed,
        not match?({:profile, _}, default) do
      assert Settings.conforms?(default, type),
             "#{name}: default #{inspect(default)} is not #{Macro.to_string(type)}"
    end
  end

  test "every getter of the table exists, and returns its default when nothing is set" do
    for {name, keys, default, _type, _doc} <- Settings.plain() ++ Settings.structured(),
        default != :computed,
        Enum.all?(keys, &(is_atom(&1) and Application.fetch_env(:snakepit, &1) == :error)) do
      assert apply(Snakepit.Defaults, name, []) == default, "Snakepit.Defaults.#{name}/0"
    end
  end

  test "aliases are typed like the setting they set" do
    assert Settings.type(:worker_shutdown_grace_period) ==
             Settings.type(:graceful_shutdown_timeout_ms)

    assert {:ok, _} = Settings.type(:default_command_timeout)

    assert {:error, message} = Settings.check(worker_shutdown_grace_period: -1)
    assert message =~ "worker_shutdown_grace_period"
  end

  test "the check names the key, the type and the value" do
    assert {:error, message} = Settings.check(max_nesting_depth: 5_000)
    assert message =~ "max_nesting_depth"
    assert message =~ "1..2000"
    assert message =~ "5000"

    assert {:error, message} = Settings.check(python_path: "/not/a/list")
    assert message =~ "python_path: must be [String.t()]"

    assert {:error, _} = Settings.check(cluster: "yes")
    assert {:ok, []} = Settings.check(cluster: [enabled: true], python_path: ["/a"])
    # Pool keys at the top level are checked with their pool, not here.
    assert {:ok, []} = Settings.check(pool_size: 4, adapter_args: ["--adapter", "m.A"])
  end

  test "an unknown key is warned about once, with the nearest known key" do
    key = :cancel_grace_msec
    :persistent_term.erase({Settings, :warned, key})
    Application.put_env(:snakepit, key, 10)
    on_exit(fn -> Application.delete_env(:snakepit, key) end)

    log = capture_log(fn -> assert :ok = Settings.check_at_start() end)
    assert log =~ "cancel_grace_msec: is not a Snakepit setting and is ignored"
    assert log =~ "did you mean cancel_grace_ms?"

    log = capture_log(fn -> assert :ok = Settings.check_at_start() end)
    refute log =~ "cancel_grace_msec"
  end

  test "a setting of the wrong type stops the application's start, naming it" do
    Application.stop(:snakepit)
    Application.put_env(:snakepit, :stream_window, :lots)

    on_exit(fn ->
      Application.delete_env(:snakepit, :stream_window)
      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)

    assert {:error, {:snakepit, {{:invalid_config, message}, _}}} =
             Application.ensure_all_started(:snakepit)

    assert message == "config :snakepit, stream_window: must be pos_integer(), got: :lots"
  end
end
