defmodule Snakepit.CompatibilityPageTest do
  # docs/compatibility.md against the code, so the page cannot drift: its
  # tables are parsed and each row is checked, and everything upstream
  # documents (test/fixtures/compat/, from scripts/documented_api.exs) is
  # either here or on the page.
  use ExUnit.Case, async: false

  import ExUnit.CaptureLog

  alias Snakepit.Config.Compat
  alias Snakepit.Test.AppEnv

  @root Path.expand("../..", __DIR__)
  @page Path.join(@root, "docs/compatibility.md")
  @fixtures Path.join(@root, "test/fixtures/compat")
  @function_ref ~r/^(Snakepit(?:\.[A-Z][A-Za-z0-9]*)*)\.([a-z_][A-Za-z0-9_]*[?!]?)\/(\d+)(?:-(\d+))?$/

  # The settings issue 35 names as read by nothing: each must now be mapped
  # or replaced on the page.
  @issue_settings ~w(default_command_timeout pool_startup_timeout grpc_worker_execute_timeout
    grpc_worker_stream_timeout health_check_interval pool_max_cancelled_entries
    pool_cancelled_retention_multiplier process_registry_cleanup_interval
    process_registry_unregister_cleanup_delay process_registry_unregister_cleanup_attempts
    grpc_num_acceptors grpc_max_connections grpc_socket_backlog
    grpc_listener_port_check_interval_ms grpc_listener_ready_timeout_ms
    grpc_listener_reuse_attempts grpc_listener_reuse_retry_delay_ms
    grpc_listener_reuse_wait_timeout_ms grpc_config python_adapter worker_init_timeout
    worker_health_check_interval worker_shutdown_grace_period cleanup_retry_interval
    cleanup_max_retries grpc_client_execute_timeout)a

  # -- the page ------------------------------------------------------------------

  defp page, do: File.read!(@page)

  # %{"Functions" => [[cell, ...], ...], ...}: the rows of each section's table.
  defp tables do
    {tables, _} =
      page()
      |> String.split("\n")
      |> Enum.reduce({%{}, nil}, fn
        "## " <> section, {acc, _} ->
          {acc, section}

        "|---" <> _, acc ->
          acc

        "| " <> _ = line, {acc, section} when section != nil ->
          cells =
            line
            |> String.trim()
            |> String.trim("|")
            |> String.split("|")
            |> Enum.map(&String.trim/1)

          {Map.update(acc, section, [cells], &(&1 ++ [cells])), section}

        _, acc ->
          acc
      end)

    # Without each table's header row.
    Map.new(tables, fn {section, [_header | rows]} -> {section, rows} end)
  end

  defp rows(section, status),
    do: for([name, ^status | _] <- Map.fetch!(tables(), section), do: unquote_cell(name))

  defp unquote_cell(cell), do: String.trim(cell, "`")

  defp functions(ref) do
    [_, module, name, from | to] = Regex.run(@function_ref, ref)
    to = if to == [], do: from, else: hd(to)
    module = Module.concat([module])

    for arity <- String.to_integer(from)..String.to_integer(to),
        do: {module, String.to_atom(name), arity}
  end

  defp exported?({module, name, arity}),
    do: Code.ensure_loaded?(module) and function_exported?(module, name, arity)

  defp format({m, f, a}), do: "#{inspect(m)}.#{f}/#{a}"

  # -- what upstream documents -----------------------------------------------------

  defp fixture_lines(name) do
    Path.join(@fixtures, name)
    |> File.read!()
    |> String.split("\n", trim: true)
    |> Enum.reject(&String.starts_with?(&1, "#"))
  end

  # [{mfa, documented signature}]
  defp documented_functions do
    for line <- fixture_lines("documented_functions.txt") do
      [ref, signature] = String.split(line, "  # ", parts: 2)
      [mfa] = functions(ref)
      {mfa, signature}
    end
  end

  defp documented_settings,
    do: for(line <- fixture_lines("documented_settings.txt"), do: String.to_atom(line))

  defp documented_events do
    for line <- fixture_lines("documented_events.txt") do
      line
      |> String.trim("[")
      |> String.trim("]")
      |> String.split(", ")
      |> Enum.map(&event_part/1)
    end
  end

  defp event_part(":" <> name), do: String.to_atom(name)

  defp event(cell),
    do:
      cell
      |> unquote_cell()
      |> String.trim("[")
      |> String.trim("]")
      |> String.split(", ")
      |> Enum.map(&event_part/1)

  # -- functions -------------------------------------------------------------------

  test "the documented function list is the module reference's, when the seeds are here" do
    seeds = System.get_env("SNAKEPIT_SEEDS") || Path.expand("../shared/seeds", @root)

    if File.dir?(seeds) do
      {output, status} =
        System.cmd("elixir", [Path.join(@root, "scripts/documented_api.exs"), "--check", seeds],
          stderr_to_stdout: true
        )

      assert status == 0, "run `elixir scripts/documented_api.exs`:\n" <> output
    end
  end

  test "every function on the page is one upstream documents" do
    documented = MapSet.new(documented_functions(), &elem(&1, 0))

    for status <- ["implemented", "not provided"],
        ref <- rows("Functions", status),
        mfa <- functions(ref) do
      assert mfa in documented, "#{format(mfa)} is on the page but not in upstream's reference"
    end
  end

  test "functions listed as implemented exist with that arity; those not provided do not" do
    for ref <- rows("Functions", "implemented"),
        mfa <- functions(ref),
        do: assert(exported?(mfa), "#{format(mfa)} is listed as implemented")

    for ref <- rows("Functions", "not provided"),
        mfa <- functions(ref),
        do: refute(exported?(mfa), "#{format(mfa)} exists: take it off the page")

    for module <- rows("Modules", "not provided"),
        do: refute(Code.ensure_loaded?(Module.concat([module])), "#{module} exists")
  end

  test "every documented function exists, or the page says why not" do
    on_page =
      for ref <- rows("Functions", "not provided"),
          mfa <- functions(ref),
          into: MapSet.new(),
          do: mfa

    modules = for m <- rows("Modules", "not provided"), into: MapSet.new(), do: Module.concat([m])

    missing =
      for {{module, _, _} = mfa, _} <- documented_functions(),
          not exported?(mfa),
          mfa not in on_page and module not in modules,
          do: format(mfa)

    assert missing == []
  end

  test "the summary's counts are the real ones" do
    documented = documented_functions()
    present = Enum.count(documented, fn {mfa, _} -> exported?(mfa) end)

    signatures =
      Enum.group_by(documented, fn {{m, _, _}, sig} -> {m, sig} end, &elem(&1, 0))

    whole = Enum.count(signatures, fn {_, mfas} -> Enum.all?(mfas, &exported?/1) end)

    assert page() =~
             ~r/#{present} of #{length(documented)}\s+function\/arity pairs exist here \(#{whole} of #{map_size(signatures)} documented signatures\)/

    assert page() =~ ~r/The #{length(documented) - present}\s+others/
  end

  test "every function the page names as a replacement exists" do
    # First cells of not-provided rows name what is missing; every other
    # `Module.function/arity` on the page must be callable.
    missing = MapSet.new(rows("Functions", "not provided"))

    refs =
      Regex.scan(
        ~r/`(Snakepit(?:\.[A-Z][A-Za-z0-9]*)+\.[a-z_][A-Za-z0-9_]*[?!]?\/\d+(?:-\d+)?)`/,
        page()
      )
      |> Enum.map(fn [_, ref] -> ref end)
      |> Enum.reject(&(&1 in missing))
      |> Enum.uniq()

    assert refs != []

    for ref <- refs,
        mfa <- functions(ref),
        do: assert(exported?(mfa), "the page names #{format(mfa)}, which does not exist")
  end

  # -- settings --------------------------------------------------------------------

  defp setting_rows(status) do
    for [name, ^status, what] <- Map.fetch!(tables(), "Settings"),
        do: {String.to_atom(unquote_cell(name)), what}
  end

  defp page_settings,
    do: Enum.map(setting_rows("mapped") ++ setting_rows("replaced"), &elem(&1, 0))

  test "the settings the issue names are each mapped or replaced" do
    assert @issue_settings -- page_settings() == []
  end

  test "every documented setting is read by the code or is on the page" do
    lib =
      Path.wildcard(Path.join(@root, "lib/**/*.ex"))
      |> Enum.map_join("\n", &File.read!/1)

    unread =
      for key <- documented_settings(),
          key not in page_settings(),
          not (lib =~ ~r/(:#{key}\b|\b#{key}:)/),
          do: key

    assert unread == []
  end

  test "a mapped setting sets what the page says, and that setting is read by the code" do
    mapped = setting_rows("mapped")
    AppEnv.isolate(Enum.map(mapped, &elem(&1, 0)) ++ [:pools, :adapter_args, :pool_config])

    lib_outside_defaults =
      Path.wildcard(Path.join(@root, "lib/**/*.ex"))
      |> Enum.reject(&String.ends_with?(&1, "/defaults.ex"))
      |> Enum.map_join("\n", &File.read!/1)

    for {key, what} <- mapped do
      case Regex.run(~r/^`Snakepit\.Defaults\.([a-z_]+)\/0`/, what) do
        [_, getter] ->
          getter = String.to_atom(getter)
          AppEnv.isolate([getter])
          sentinel = if getter == :tcp_host, do: "127.0.0.9", else: 7_654_321
          Application.put_env(:snakepit, key, sentinel)

          assert apply(Snakepit.Defaults, getter, []) == sentinel,
                 "#{key} does not set Snakepit.Defaults.#{getter}/0"

          Application.delete_env(:snakepit, key)

          assert lib_outside_defaults =~ ~r/\b#{getter}\b/,
                 "nothing outside Snakepit.Defaults reads #{getter}"

        nil ->
          check_mapped(key)
      end
    end
  end

  # The mapped settings whose target is not one getter.
  defp check_mapped(:python_adapter) do
    Application.put_env(:snakepit, :python_adapter, "my_adapters:MyAdapter")
    assert {:ok, [pool]} = Snakepit.Config.get_pool_configs()
    assert pool.adapter_args == ["--adapter", "my_adapters:MyAdapter"]

    assert {:ok, [%{adapter_args: ["--adapter", _]}]} =
             Snakepit.Config.normalize_all([%{name: :x}])

    # A pool's own adapter_args win.
    assert {:ok, [%{adapter_args: []}]} =
             Snakepit.Config.normalize_all([%{name: :x, adapter_args: []}])

    Application.delete_env(:snakepit, :python_adapter)
    assert {:ok, [%{adapter_args: []}]} = Snakepit.Config.get_pool_configs()
  end

  defp check_mapped(:session_config) do
    AppEnv.isolate([:session_default_ttl, :session_cleanup_interval])
    Application.put_env(:snakepit, :session_config, %{ttl: 11, cleanup_interval: 22})
    assert Snakepit.Defaults.session_default_ttl() == 11
    assert Snakepit.Defaults.session_cleanup_interval() == 22
    Application.put_env(:snakepit, :session_config, ttl: 33)
    assert Snakepit.Defaults.session_default_ttl() == 33
    assert Snakepit.Defaults.session_cleanup_interval() == 60_000
    Application.delete_env(:snakepit, :session_config)
  end

  defp check_mapped(other), do: flunk("no check for the mapped setting #{other}: add one")

  test "the replaced settings are exactly those Snakepit warns about, each with its reason" do
    replaced = setting_rows("replaced") |> Enum.map(&elem(&1, 0)) |> Enum.sort()
    assert replaced == Compat.replaced() |> Enum.map(&elem(&1, 0)) |> Enum.sort()

    for {key, why} <- Compat.replaced() do
      assert [{^key, message}] = Compat.warnings([{key, 1}])
      assert message =~ "#{key}" and message =~ why
    end

    # A Defaults getter whose setting nothing reads is a replaced setting.
    assert Snakepit.Defaults.inert() -- replaced == []
  end

  test "the warnings are logged at start, once per VM" do
    AppEnv.isolate([:grpc_num_acceptors, :python_adapter])
    Application.put_env(:snakepit, :grpc_num_acceptors, 99)
    Application.put_env(:snakepit, :python_adapter, :not_a_string)

    log =
      capture_log(fn ->
        Compat.warn_at_start()
        Compat.warn_at_start()
      end)

    assert log =~ "grpc_num_acceptors" and log =~ "no acceptor pool"
    assert length(String.split(log, "config :snakepit, grpc_num_acceptors")) == 2
    assert log =~ "python_adapter: :not_a_string is ignored"
    assert capture_log(fn -> Compat.warn_at_start() end) == ""
  end

  test "a fresh VM warns at application start, once per setting, and not for mapped ones" do
    script = """
    Application.put_env(:snakepit, :pooling_enabled, false)
    Application.put_env(:snakepit, :grpc_num_acceptors, 20)
    Application.put_env(:snakepit, :pool_max_cancelled_entries, 1024)
    Application.put_env(:snakepit, :worker_shutdown_grace_period, 4_000)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    IO.puts("GRACE " <> Integer.to_string(Snakepit.Defaults.graceful_shutdown_timeout_ms()))
    :ok = Application.stop(:snakepit)
    {:ok, _} = Application.ensure_all_started(:snakepit)
    IO.puts("STARTED TWICE")
    """

    {output, status} = Snakepit.Test.ExternalBeam.run(script, [], 60_000)
    assert status == 0, output
    assert output =~ "GRACE 4000" and output =~ "STARTED TWICE"

    for key <- [:grpc_num_acceptors, :pool_max_cancelled_entries] do
      assert length(String.split(output, "config :snakepit, #{key}:")) == 2, output
    end

    refute output =~ "worker_shutdown_grace_period"
  end

  # -- telemetry -------------------------------------------------------------------

  test "events listed as emitted are in the catalog; those not emitted are not" do
    for cell <- rows("Telemetry events", "emitted"),
        do: assert(event(cell) in Snakepit.Telemetry.events(), "#{cell} is not in the catalog")

    for cell <- rows("Telemetry events", "not emitted"),
        do: refute(event(cell) in Snakepit.Telemetry.events(), "#{cell} is in the catalog")
  end

  test "every documented event is emitted, or the page says why not" do
    catalog = Snakepit.Telemetry.events()
    on_page = Enum.map(rows("Telemetry events", "not emitted"), &event/1)

    missing =
      for event <- documented_events(),
          not covered?(event, catalog, on_page),
          do: event

    assert missing == []
  end

  defp covered?(event, catalog, on_page) do
    case Enum.split(event, -1) do
      {prefix, [:*]} -> Enum.any?(catalog, &:lists.prefix(prefix, &1))
      _ -> event in catalog or event in on_page
    end
  end

  test "every event the notes name is in the catalog" do
    not_emitted = rows("Telemetry events", "not emitted")

    named =
      Regex.scan(~r/`(\[:snakepit(?:, :[a-z_]+)+\])`/, page())
      |> Enum.map(fn [_, cell] -> cell end)
      |> Enum.reject(&(&1 in not_emitted))
      |> Enum.uniq()

    for cell <- named, do: assert(event(cell) in Snakepit.Telemetry.events(), "#{cell}")
  end
end
