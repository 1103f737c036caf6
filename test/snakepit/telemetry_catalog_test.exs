defmodule Snakepit.TelemetryCatalogTest do
  # Snakepit.Telemetry.events/0 against the code, both ways: every event a
  # module emits is in the catalog, and every catalog entry is emitted
  # somewhere. Found by reading lib/ (calls to Telemetry.emit with a literal
  # event, and modules whose private emit/3 adds a fixed prefix).
  use ExUnit.Case, async: true

  alias Snakepit.Telemetry

  @lib Path.expand("../../lib", __DIR__)

  test "every emitted event is in the catalog" do
    assert MapSet.difference(emitted(), MapSet.new(Telemetry.events())) |> Enum.sort() == []
  end

  test "every catalog entry is emitted" do
    missing = MapSet.difference(MapSet.new(Telemetry.events()), emitted()) |> Enum.sort()
    # Python events are emitted by GrpcStream from the names in Naming's
    # table (checked below), not as literals.
    assert missing -- Telemetry.python_events() == []
  end

  test "the Python events are exactly those Naming maps worker events to" do
    catalog = Enum.map(Snakepit.Telemetry.Naming.python_event_catalog(), & &1.event)
    assert Enum.sort(catalog) == Enum.sort(Telemetry.python_events())

    for %{python: name, event: event} <- Snakepit.Telemetry.Naming.python_event_catalog() do
      assert Snakepit.Telemetry.Naming.from_parts(String.split(name, ".")) == {:ok, event}
    end
  end

  test "the groups add up to the catalog, without duplicates" do
    groups =
      Telemetry.pool_events() ++
        Telemetry.heartbeat_events() ++
        Telemetry.session_events() ++
        Telemetry.program_events() ++
        Telemetry.script_events() ++
        Telemetry.grpc_events() ++
        Telemetry.python_events() ++
        Telemetry.runtime_events() ++ Telemetry.hardware_events() ++ Telemetry.cluster_events()

    assert Enum.sort(groups) == Enum.sort(Telemetry.events())
    assert Enum.uniq(Telemetry.events()) == Telemetry.events()
  end

  defp emitted do
    for file <- Path.wildcard(Path.join(@lib, "**/*.ex")),
        event <- events_in(Code.string_to_quoted!(File.read!(file))),
        into: MapSet.new(),
        do: event
  end

  defp events_in(ast) do
    {_, calls} = Macro.prewalk(ast, [], fn node, acc -> {node, [node | acc]} end)
    prefix = Enum.find_value(calls, &prefix_of/1)

    Enum.flat_map(calls, fn
      {{:., _, [{:__aliases__, _, path}, :emit]}, _, [event | _]} when is_list(event) ->
        if List.last(path) == :Telemetry and Enum.all?(event, &is_atom/1), do: [event], else: []

      {:emit, _, [suffix | _]} when prefix != nil ->
        cond do
          is_atom(suffix) -> [prefix ++ [suffix]]
          is_list(suffix) and Enum.all?(suffix, &is_atom/1) -> [prefix ++ suffix]
          true -> []
        end

      _ ->
        []
    end)
  end

  # `Telemetry.emit([:snakepit, :x | suffix], ...)` or
  # `Telemetry.emit([:snakepit, :x, event], ...)` inside a private emit.
  defp prefix_of({{:., _, [{:__aliases__, _, path}, :emit]}, _, [event | _]}) do
    if List.last(path) == :Telemetry, do: variable_tail(event)
  end

  defp prefix_of(_), do: nil

  defp variable_tail([:snakepit, {:|, _, [name, {var, _, ctx}]}])
       when is_atom(name) and is_atom(var) and is_atom(ctx),
       do: [:snakepit, name]

  defp variable_tail([:snakepit, name, {var, _, ctx}])
       when is_atom(name) and is_atom(var) and is_atom(ctx),
       do: [:snakepit, name]

  defp variable_tail(_), do: nil
end
