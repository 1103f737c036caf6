defmodule Snakepit.PublicApiBadInputTest do
  # Every documented public function of Snakepit, Snakepit.ZeroCopy and
  # Snakepit.Bridge.SessionStore, called with a table of bad values for each
  # argument (one argument bad at a time, the others good): none raises or
  # exits, each answers {:error, %Snakepit.Error{category: :validation}} or,
  # where the documented return has no room for it, its documented shape
  # (a session id that cannot exist is simply :not_found). A documented
  # function missing from the table fails the test, so new API is covered.
  use ExUnit.Case, async: false

  alias Snakepit.{Error, ZeroCopy, ZeroCopyRef}
  alias Snakepit.Bridge.SessionStore

  @bad_opts [
    :nope,
    "opts",
    %{timeout: 1},
    [1, 2],
    [timeout: -1],
    [timeout: 1.5],
    [timeout: 2 ** 70],
    [deadline_ms: 1.5],
    [queue_timeout: -1],
    [queue_timeout: 1.5],
    [session_id: 123],
    [session_id: :atom],
    [avoid: :x],
    [affinity: :bogus],
    [pool: "default"],
    [pool: 123],
    [pool: {1, 2, 3}],
    [pool: {"x", :y}],
    [metadata: "x"],
    [binary_parameters: %{"k" => 1}],
    [idempotent: "yes"],
    [correlation_id: 7],
    [node: "somewhere"]
  ]
  @bad_command [123, nil, "", :ping, ~c"ping", %{}]
  @bad_args ["x", [a: 1], 123, nil, {:a, 1}]
  @bad_callback [nil, :cb, &Kernel.node/0, &Kernel.max/2]
  @bad_session [nil, 123, :atom, "", <<255, 254>>, {:s, 1}]
  @bad_pool ["default", 123, {1, 2, 3}, {"x", :y}, 1.5, nil]
  @bad_ids [123, :atom, "", nil, <<255>>, {:x}]
  @bad_server ["x", 123, {1, 2, 3}, [1]]

  defp forged(kind), do: %ZeroCopyRef{kind: kind, ref: make_ref(), bytes: 4}

  defp validation?({:error, %Error{category: :validation}}), do: true
  defp validation?(_), do: false

  # {function, arity} => {good arguments, [bad values per argument], expected?}
  defp table do
    cb = fn _chunk -> :ok end
    store = SessionStore
    me = self()
    # The session variants put their own session_id over the options'.
    session_opts = Enum.reject(@bad_opts, &match?([session_id: _], &1))

    %{
      # -- Snakepit -----------------------------------------------------------------
      {Snakepit, :execute, 3} =>
        {["ping", %{}, []], [@bad_command, @bad_args, @bad_opts], &validation?/1},
      {Snakepit, :execute_many, 3} =>
        {["ping", [%{}], []],
         [
           @bad_command,
           ["x", 123, nil, %{}, {:a, 1}, [%{} | :tail]],
           [[chunk_size: 0] | @bad_opts]
         ], &validation?/1},
      {Snakepit, :execute_stream, 4} =>
        {["ping", %{}, cb, []], [@bad_command, @bad_args, @bad_callback, @bad_opts],
         &validation?/1},
      {Snakepit, :execute_in_session, 4} =>
        {["s", "ping", %{}, []], [@bad_session, @bad_command, @bad_args, session_opts],
         &validation?/1},
      {Snakepit, :execute_in_session_stream, 5} =>
        {["s", "ping", %{}, cb, []],
         [@bad_session, @bad_command, @bad_args, @bad_callback, session_opts], &validation?/1},
      {Snakepit, :get_stats, 1} => {[Snakepit.Pool], [@bad_pool], &validation?/1},
      {Snakepit, :list_workers, 1} => {[Snakepit.Pool], [@bad_pool], &validation?/1},
      {Snakepit, :run_as_script, 2} =>
        {[fn -> send(me, :ran) end, [exit_mode: :none, stop_mode: :never]],
         [
           [nil, :f, fn _ -> :ok end],
           [:x, [1], [exit_mode: :explode], [timeout: -1], [stop_mode: :sometimes]]
         ], &validation?/1},
      {Snakepit, :cleanup, 0} => :no_input,

      # -- Snakepit.ZeroCopy --------------------------------------------------------
      {ZeroCopy, :to_dlpack, 2} =>
        {[<<>>, [dtype: :float32]],
         [
           [123, :x, [1], nil, ~c"ab"],
           [
             :nope,
             [1],
             [dtype: :bogus],
             [],
             [dtype: :float32, shape: {0, 2 ** 70}],
             [dtype: :float32, shape: {0, -1}],
             [dtype: :float32, shape: [1 | 2]],
             [dtype: :float32, shape: "x"],
             [dtype: :float32, shape: List.duplicate(1, 100)],
             [dtype: :float32, device: :tpu],
             [dtype: :float32, device: :cuda],
             [dtype: :float32, owner: :python],
             [dtype: "no such type"]
           ]
         ], &validation?/1},
      {ZeroCopy, :to_arrow, 2} =>
        {["ARROW1", []],
         [[123, nil, "not arrow"], [:nope, [1], [owner: :python], [device: :cuda]]],
         &validation?/1},
      {ZeroCopy, :from_dlpack, 2} =>
        {[forged(:dlpack), []],
         [[123, nil, forged(:arrow), forged(:dlpack), %{kind: :dlpack}], [:nope, [1], [copy: 1]]],
         &validation?/1},
      {ZeroCopy, :from_arrow, 2} =>
        {[forged(:arrow), []],
         [[123, nil, forged(:dlpack), forged(:arrow)], [:nope, [1], [copy: "yes"]]],
         &validation?/1},
      {ZeroCopy, :close, 1} => {[forged(:dlpack)], [[123, nil, forged(:arrow)]], &validation?/1},
      {ZeroCopy, :dtypes, 0} => :no_input,
      {ZeroCopy, :stats, 0} => :no_input,

      # -- Snakepit.Bridge.SessionStore ---------------------------------------------
      {SessionStore, :start_link, 1} => {[[]], [[:x, "opts", [1]]], &validation?/1},
      {SessionStore, :create_session, 2} =>
        {["s", []],
         [@bad_ids, [:x, [ttl: -1], [ttl: "long"], [metadata: "x"], [created_at: 1.5], [1]]],
         &validation?/1},
      {SessionStore, :create_session, 3} =>
        {[store, "s", []], [@bad_server, @bad_ids, [:x, [ttl: -1]]], &validation?/1},
      {SessionStore, :get_session, 1} => {["s"], [@bad_ids], &(&1 == {:error, :not_found})},
      {SessionStore, :get_session, 2} =>
        {[store, "s"], [@bad_server, @bad_ids], &(&1 == {:error, :not_found})},
      {SessionStore, :update_session, 2} =>
        {["s", & &1], [@bad_ids, [nil, :f, fn -> :ok end]], &validation?/1},
      {SessionStore, :update_session, 3} =>
        {[store, "s", & &1], [@bad_server, @bad_ids, [nil, fn -> :ok end]], &validation?/1},
      {SessionStore, :delete_session, 1} => {["s"], [@bad_ids], &(&1 == :ok)},
      {SessionStore, :delete_session, 2} => {[store, "s"], [@bad_server, @bad_ids], &(&1 == :ok)},
      {SessionStore, :session_exists?, 1} => {["s"], [@bad_ids], &(&1 == false)},
      {SessionStore, :session_exists?, 2} =>
        {[store, "s"], [@bad_server, @bad_ids], &(&1 == false)},
      {SessionStore, :list_sessions, 0} => :no_input,
      {SessionStore, :list_sessions, 1} => {[store], [@bad_server], &(&1 == [])},
      {SessionStore, :cleanup_expired_sessions, 0} => :no_input,
      {SessionStore, :cleanup_expired_sessions, 1} => {[store], [@bad_server], &(&1 == 0)},
      {SessionStore, :get_stats, 0} => :no_input,
      {SessionStore, :get_stats, 1} => {[store], [@bad_server], &is_map/1},
      {SessionStore, :store_worker_session, 2} =>
        {["s", "w"], [@bad_ids, @bad_ids], &(&1 == :ok)},
      {SessionStore, :last_worker, 1} => {["s"], [@bad_ids], &is_nil/1},
      {SessionStore, :store_program, 3} =>
        {["s", "p", :data], [@bad_ids, @bad_ids, []], &validation?/1},
      {SessionStore, :get_program, 2} =>
        {["s", "p"], [@bad_ids, []], &(&1 == {:error, :not_found})},
      {SessionStore, :delete_program, 2} => {["s", "p"], [@bad_ids, @bad_ids], &(&1 == :ok)},
      {SessionStore, :store_global_program, 2} => {["p", :data], [@bad_ids, []], &validation?/1},
      {SessionStore, :get_global_program, 1} =>
        {["p"], [@bad_ids], &(&1 == {:error, :not_found})},
      {SessionStore, :delete_global_program, 1} => {["p"], [@bad_ids], &(&1 == :ok)}
    }
  end

  # Documented public functions (not @doc false, not callbacks) at each arity.
  defp documented(module) do
    {:docs_v1, _, _, _, _, _, docs} = Code.fetch_docs(module)

    for {{:function, name, arity}, _, _, doc, _} <- docs,
        doc != :hidden,
        name not in [:child_spec, :init, :handle_call, :handle_cast, :handle_info],
        uniq: true,
        do: {module, name, arity}
  end

  test "the table covers every documented public function (each at its full arity or as :no_input)" do
    covered = Map.keys(table())

    for module <- [Snakepit, ZeroCopy, SessionStore],
        {^module, name, arity} <- documented(module) do
      full = Enum.filter(covered, fn {m, n, _} -> m == module and n == name end)

      assert full != [],
             "#{inspect(module)}.#{name}/#{arity} is public and documented but not in the table"
    end
  end

  test "no public function raises on bad input; each answers a validation error or its documented shape" do
    for {{module, name, _arity}, {good, bad_per_arg, expected?}} <- table(),
        {bad_values, position} <- Enum.with_index(bad_per_arg),
        bad <- bad_values do
      args = List.replace_at(good, position, bad)

      result =
        try do
          apply(module, name, args)
        rescue
          e -> {:raised, e}
        catch
          kind, reason -> {:caught, kind, reason}
        end

      assert expected?.(result),
             "#{inspect(module)}.#{name}(#{Enum.map_join(args, ", ", &inspect(&1, limit: 5))}) " <>
               "answered #{inspect(result, limit: 8)}"

      case result do
        {:error, %Error{details: details}} when is_map_key(details, :option) ->
          assert is_atom(details.option)

        _ ->
          :ok
      end
    end

    # No script ran, no session appeared.
    refute_received :ran
    refute SessionStore.session_exists?("s")
  end

  test "a bad option names itself, its value and what is allowed" do
    assert {:error, %Error{category: :validation} = error} =
             Snakepit.execute("ping", %{}, queue_timeout: 1.5)

    assert error.details == %{
             option: :queue_timeout,
             value: 1.5,
             expected: error.details.expected
           }

    assert error.message =~ "queue_timeout"
    assert error.message =~ "1.5"
    assert error.details.expected =~ "non-negative integer"
  end
end
