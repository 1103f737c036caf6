defmodule Snakepit.Bridge.SessionTest do
  use ExUnit.Case, async: true

  alias Snakepit.Bridge.Session

  doctest Snakepit.Bridge.Session

  test "programs and metadata" do
    s = Session.new("s", ttl: 60)
    s = s |> Session.put_program("p1", %{model: "m"}) |> Session.put_metadata(:k, 1)
    assert {:ok, %{model: "m"}} = Session.get_program(s, "p1")
    assert {:error, :not_found} = Session.get_program(s, "p2")
    assert Session.get_metadata(s, :k) == 1
    assert Session.get_metadata(s, :missing, :d) == :d
    s = Session.delete_program(s, "p1")
    assert {:error, :not_found} = Session.get_program(s, "p1")
    stats = Session.get_stats(s)
    assert %{program_count: 0, programs_stored: 1, programs_deleted: 1, ttl: 60} = stats
  end

  test "touch moves last_accessed forward and keeps an active session alive" do
    # Last used 100 s ago with a TTL of 5 s: expired now. (Monotonic seconds
    # may be negative, so "old" is relative to now, not 0.)
    before = Session.now()
    s = Session.new("s", ttl: 5, created_at: before - 100)
    assert Session.expired?(s, before)

    touched = Session.touch(s)
    assert touched.last_accessed >= before
    assert touched.last_accessed > s.last_accessed
    refute Session.expired?(touched, before)
    # Only last_accessed moves.
    assert %{touched | last_accessed: s.last_accessed} == s
  end

  test "validate rejects malformed sessions" do
    assert {:error, :invalid_ttl} = Session.validate(%{Session.new("s") | ttl: -1})
    assert {:error, :invalid_metadata} = Session.validate(%{Session.new("s") | metadata: []})
    assert {:error, :not_a_session} = Session.validate(%{id: "s"})
  end
end
