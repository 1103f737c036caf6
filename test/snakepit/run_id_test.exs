defmodule Snakepit.RunIDTest do
  use ExUnit.Case, async: true

  alias Snakepit.RunID

  test "ids are 7 base36 characters and differ" do
    ids = for _ <- 1..200, do: RunID.generate()
    assert Enum.all?(ids, &String.match?(&1, ~r/\A[0-9a-z]{7}\z/))
    assert length(Enum.uniq(ids)) > 195
  end

  test "the run id is found in a worker's command line" do
    cmd =
      "/venv/bin/python -m snakepit_bridge.server --adapter x.Y --snakepit-run-id ab12cd3 --worker-id w1"

    assert {:ok, "ab12cd3"} = RunID.extract_from_command(cmd)
    assert {:ok, "zz99zz9"} = RunID.extract_from_command("python --run-id zz99zz9")
    assert {:error, :not_found} = RunID.extract_from_command("python -m http.server")
    assert {:error, :not_found} = RunID.extract_from_command("x --snakepit-run-id TOOLONGID")
  end

  test "current/0 is made once and is the same for every process of the VM" do
    id = RunID.current()
    assert RunID.valid?(id)
    # Another process sees the same id, as do later calls: it is not made anew.
    assert Task.await(Task.async(&RunID.current/0)) == id
    assert for(_ <- 1..50, do: RunID.current()) == List.duplicate(id, 50)
    # And it is what a worker's command line carries.
    assert {:ok, ^id} = RunID.extract_from_command("python -m x --snakepit-run-id #{id}")
    refute RunID.valid?("../x")
    refute RunID.valid?("ABC1234")
  end
end
