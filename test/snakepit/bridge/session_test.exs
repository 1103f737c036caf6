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
    s = Session.new("s", ttl: 5, created_at: 0)
    assert Session.expired?(s, 6)
    touched = Session.touch(s)
    refute Session.expired?(touched, touched.last_accessed + 5)
  end

  test "validate rejects malformed sessions" do
    assert {:error, :invalid_ttl} = Session.validate(%{Session.new("s") | ttl: -1})
    assert {:error, :invalid_metadata} = Session.validate(%{Session.new("s") | metadata: []})
    assert {:error, :not_a_session} = Session.validate(%{id: "s"})
  end
end
