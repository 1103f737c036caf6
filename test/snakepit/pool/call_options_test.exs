defmodule Snakepit.Pool.CallOptionsTest do
  use ExUnit.Case, async: true

  alias Snakepit.Error
  alias Snakepit.Pool.CallOptions

  doctest CallOptions

  # Every known option with values it refuses; each must come back as a
  # :validation error naming the option and the value.
  @bad [
    pool: ["default", 123, {1, 2, 3}, {"x", :y}, {:server, "name"}, 1.5],
    pool_server: ["x", {:a, :b}],
    timeout: [0, -1, 1.5, 2 ** 70, "1000", :never],
    deadline_ms: [1.5, "soon", 2 ** 70, :later],
    queue_timeout: [-1, 1.5, 2 ** 70, "x"],
    session_id: [123, :atom, "", <<255, 254>>, ~c"charlist", {:s, 1}],
    affinity: [:bogus, "hint", 1],
    idempotent: ["true", 1, :yes],
    metadata: ["x", [a: 1], %{"k" => 1}, %{1 => "v"}, %{"k" => <<255>>}],
    binary_parameters: ["x", %{"k" => 1}, %{{:t} => "b"}],
    correlation_id: [1, "", :atom],
    traceparent: [123],
    node: ["node@host", 1],
    require: ["gpu", [gpu: true]],
    avoid: [:x, "w1", [1, 2], [:w | :x]],
    avoid_nodes: [:n, ["n"]]
  ]

  test "every bad value of every option is a validation error naming it" do
    for {option, values} <- @bad, value <- values do
      assert {:error, %Error{category: :validation, details: details, message: message}} =
               CallOptions.normalize([{option, value}]),
             "#{option}: #{inspect(value)} was accepted"

      assert details.option == option
      assert details.value == value
      assert is_binary(details.expected)
      assert message =~ Atom.to_string(option)
    end
  end

  test "the aliases are checked like the options they stand for" do
    assert {:error, %Error{details: %{option: :pool}}} = CallOptions.normalize(pool_name: "x")
  end

  test "good values pass, nil is left out" do
    now = System.monotonic_time(:millisecond)

    good = [
      pool: :default,
      timeout: :infinity,
      deadline_ms: now + 1_000,
      queue_timeout: 0,
      session_id: "s-1",
      affinity: :strict_queue,
      idempotent: false,
      metadata: %{"k" => "v", tag: "t"},
      binary_parameters: %{"blob" => <<1, 2>>},
      correlation_id: "c",
      avoid: ["w1"],
      avoid_nodes: [:n@h],
      node: :local,
      require: %{gpu: true},
      pool_server: Snakepit.Pool
    ]

    assert {:ok, ^good} = CallOptions.normalize(good)

    assert {:ok, [pool: {Snakepit.Pool, :default}]} =
             CallOptions.normalize(pool: {Snakepit.Pool, :default})

    assert {:ok, [deadline_ms: past]} = CallOptions.normalize(deadline_ms: now - 10_000)
    assert past < now
  end

  # A call's request id is the pool's to give (it names the call in its
  # worker, to stop it there): an option of that name would have no effect.
  test "request_id is not a call option" do
    refute :request_id in CallOptions.known()

    assert ExUnit.CaptureLog.capture_log(fn ->
             assert {:ok, [request_id: "r-1"]} = CallOptions.normalize(request_id: "r-1")
           end) =~ "unknown call option :request_id"
  end

  test "options that are not a keyword list are refused" do
    for opts <- [:x, "x", %{timeout: 1}, [1, 2], [{"timeout", 1}], [:timeout | 5]] do
      assert {:error, %Error{category: :validation}} = CallOptions.normalize(opts)
    end
  end

  test "every option a caller gives is documented once, and the call functions show that text" do
    internal = [:pool_server, :avoid, :avoid_nodes]

    for key <- CallOptions.known() -- internal,
        do: assert(CallOptions.doc() =~ "* `#{inspect(key)}` - ", "#{key} undocumented")

    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(Snakepit)

    {_, _, _, %{"en" => execute_doc}, _} =
      Enum.find(docs, &match?({{:function, :execute, 3}, _, _, _, _}, &1))

    assert execute_doc =~ String.trim(CallOptions.doc())
  end
end
