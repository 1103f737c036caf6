# Telemetry from both sides of a call: Elixir's call events, the Python
# worker's own events folded into Elixir, a user's emit/span from a tool,
# runtime control, and the pool's timing stats.
#
#     mix run examples/telemetry_basic.exs
#
# Uses the bundled ShowcaseAdapter (config/config.exs): its ml_analyze_text
# tool wraps its work in telemetry.span("showcase.ml_analyze_text").

defmodule TelemetryBasic do
  alias Snakepit.Telemetry
  alias Snakepit.Telemetry.GrpcStream

  def run do
    :ok = Snakepit.Pool.await_init_complete()
    parent = self()

    events =
      [[:snakepit, :request, :executed]] ++
        (Telemetry.python_events() -- [[:snakepit, :python, :memory, :sampled]])

    # Attaching a handler to Python events tells the workers to send them.
    :ok =
      Telemetry.attach_many(
        "telemetry-basic",
        events,
        fn event, m, meta, _ ->
          send(parent, {:event, event, m, meta})
        end,
        nil
      )

    id = Telemetry.Correlation.new_id()
    IO.puts("one call, correlation id #{id}:")
    {:ok, result} = Snakepit.execute("ml_analyze_text", %{text: "a good day"}, correlation_id: id)
    IO.puts("  result: #{inspect(result)}")
    print_events(id)

    IO.puts("\nthe same call with telemetry switched off in every worker (no restart):")
    :ok = GrpcStream.toggle(:all, false)
    quiet = Telemetry.Correlation.new_id()
    {:ok, _} = Snakepit.execute("ml_analyze_text", %{text: "quiet"}, correlation_id: quiet)
    :ok = GrpcStream.toggle(:all, true)
    print_events(quiet)

    IO.puts("\nwith a filter that lets only Python's span events through:")
    :ok = GrpcStream.update_filter(:all, allow: ["python.span.*"])
    filtered = Telemetry.Correlation.new_id()
    {:ok, _} = Snakepit.execute("ml_analyze_text", %{text: "filtered"}, correlation_id: filtered)
    :ok = GrpcStream.update_filter(:all, [])
    print_events(filtered)

    Telemetry.detach("telemetry-basic")
    IO.puts("\nGrpcStream.stats(): #{inspect(GrpcStream.stats())}")

    stats = Snakepit.get_stats()

    IO.puts(
      "get_stats: utilization #{inspect(stats[:utilization])}, run_time_ms #{inspect(stats[:run_time_ms])}"
    )
  end

  # The call's events from both sides; a control round trip first, so that
  # every event the workers sent before it has been handled.
  defp print_events(id) do
    :ok = GrpcStream.toggle(:all, true)
    events = collect(id, [])
    if events == [], do: IO.puts("  (no events)")

    for {event, m, meta} <- events do
      name = Enum.map_join(event, ".", &Atom.to_string/1)
      extra = if meta[:name], do: " name=#{meta.name}", else: ""

      IO.puts(
        "  #{String.pad_trailing(name, 38)} #{inspect(m)}#{extra} worker=#{meta[:worker_id]}"
      )
    end
  end

  defp collect(id, acc) do
    receive do
      {:event, event, m, %{correlation_id: ^id} = meta} -> collect(id, [{event, m, meta} | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end
end

TelemetryBasic.run()
