defmodule Snakepit.Bridge.SessionStoreTest do
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.{Session, SessionStore}

  # A private store per test; the application's own store is tested through
  # the default-server functions at the end.
  setup context do
    name = :"store_#{System.unique_integer([:positive])}"

    opts =
      [name: name, table_name: name, cleanup_interval: 0]
      |> Keyword.merge(Map.get(context, :store, []))

    start_supervised!({SessionStore, opts})
    %{store: name}
  end

  test "create, get, update, delete", %{store: store} do
    assert {:ok, %Session{id: "s1", ttl: 7200}} =
             SessionStore.create_session(store, "s1", ttl: 7200)

    assert {:error, :already_exists} = SessionStore.create_session(store, "s1", [])
    assert {:ok, %Session{id: "s1"}} = SessionStore.get_session(store, "s1")
    assert SessionStore.session_exists?(store, "s1")
    assert SessionStore.list_sessions(store) == ["s1"]

    assert {:ok, updated} =
             SessionStore.update_session(store, "s1", &Session.put_metadata(&1, :user, 7))

    assert Session.get_metadata(updated, :user) == 7
    assert {:ok, %Session{metadata: %{user: 7}}} = SessionStore.get_session(store, "s1")

    assert :ok = SessionStore.delete_session(store, "s1")
    assert :ok = SessionStore.delete_session(store, "s1")
    assert {:error, :not_found} = SessionStore.get_session(store, "s1")
    refute SessionStore.session_exists?(store, "s1")
  end

  test "a bad update changes nothing", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "s", [])

    assert {:error, {:invalid_session, :id_changed}} =
             SessionStore.update_session(store, "s", &%{&1 | id: "other"})

    assert {:error, {:invalid_session, :not_a_session}} =
             SessionStore.update_session(store, "s", fn _ -> :oops end)

    assert {:error, {:update_failed, %RuntimeError{}}} =
             SessionStore.update_session(store, "s", fn _ -> raise "boom" end)

    assert {:error, :not_found} = SessionStore.update_session(store, "nope", & &1)
    assert {:ok, %Session{id: "s", metadata: %{}}} = SessionStore.get_session(store, "s")
  end

  test "expired sessions are invisible and swept", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "short", ttl: 0)
    {:ok, _} = SessionStore.create_session(store, "long", ttl: 3600)

    # A ttl of 0 s expires as soon as the monotonic second ticks over.
    assert Snakepit.Test.AppPool.wait_until(
             fn -> not SessionStore.session_exists?(store, "short") end,
             2_500
           ) != :timeout

    assert {:error, :not_found} = SessionStore.get_session(store, "short")
    assert SessionStore.list_sessions(store) == ["long"]
    assert SessionStore.cleanup_expired_sessions(store) == 1
    assert SessionStore.cleanup_expired_sessions(store) == 0
    assert %{sessions_expired: 1, current_sessions: 1} = SessionStore.get_stats(store)
  end

  @tag store: [max_sessions: 2]
  test "the session quota", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "a", [])
    {:ok, _} = SessionStore.create_session(store, "b", [])
    assert {:error, :session_quota_exceeded} = SessionStore.create_session(store, "c", [])
    :ok = SessionStore.delete_session(store, "a")
    assert {:ok, _} = SessionStore.create_session(store, "c", [])
  end

  @tag store: [max_sessions: 1]
  test "expired sessions do not count against the quota", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "old", ttl: 0)

    assert Snakepit.Test.AppPool.wait_until(
             fn -> not SessionStore.session_exists?(store, "old") end,
             2_500
           ) != :timeout

    assert {:ok, _} = SessionStore.create_session(store, "new", [])
  end

  test "the table is protected: only the store writes", %{store: store} do
    {:ok, _} = SessionStore.create_session(store, "s", [])
    assert :ets.info(store, :protection) == :protected
    assert_raise ArgumentError, fn -> :ets.insert(store, {"x", 0, 0, nil}) end
  end

  describe "the application's store" do
    setup do
      id = "sess-#{System.unique_integer([:positive])}"
      on_exit(fn -> SessionStore.delete_session(id) end)
      %{id: id}
    end

    test "programs with a per-session quota, replacing does not count", %{id: id} do
      {:ok, _} = SessionStore.create_session(id)
      max = SessionStore.get_stats().max_programs_per_session

      for n <- 1..max, do: assert(:ok = SessionStore.store_program(id, "p#{n}", n))

      assert {:error, {:program_quota_exceeded, ^id}} =
               SessionStore.store_program(id, "one_more", 0)

      assert :ok = SessionStore.store_program(id, "p1", :replaced)
      assert {:ok, :replaced} = SessionStore.get_program(id, "p1")
      :ok = SessionStore.delete_program(id, "p1")
      assert {:error, :not_found} = SessionStore.get_program(id, "p1")
      assert :ok = SessionStore.store_program(id, "one_more", 0)
      assert {:error, :not_found} = SessionStore.store_program("no-such-session", "p", 1)
    end

    test "global programs" do
      key = "g-#{System.unique_integer([:positive])}"
      assert :ok = SessionStore.store_global_program(key, %{prompt: "x"})
      assert {:ok, %{prompt: "x"}} = SessionStore.get_global_program(key)
      :ok = SessionStore.delete_global_program(key)
      assert {:error, :not_found} = SessionStore.get_global_program(key)
    end

    test "worker affinity is recorded, creating the session", %{id: id} do
      :ok = SessionStore.store_worker_session(id, "default_worker_2")
      # The cast is processed before this call.
      assert {:ok, %Session{last_worker_id: "default_worker_2"}} = SessionStore.get_session(id)
      assert SessionStore.last_worker(id) == "default_worker_2"
      assert SessionStore.last_worker("nobody") == nil
    end
  end
end
