# Sessions: calls of one session go to the worker of its first call while
# it is free (affinity), sessions keep their own data apart (isolation),
# and a session's worker can be looked up.
#
#     mix run examples/grpc_sessions.exs

defmodule GrpcSessions do
  def show(label, value),
    do: IO.puts(String.pad_trailing(label, 34) <> inspect(value, pretty: true, width: 90))

  defp pid_in(session) do
    {:ok, %{"pid" => pid}} = Snakepit.execute_in_session(session, "get_pid", %{})
    pid
  end

  def run do
    :ok = Snakepit.Pool.await_init_complete()

    alice = for _ <- 1..4, do: pid_in("alice")
    bob = for _ <- 1..4, do: pid_in("bob")
    show("alice's calls ran in worker pids", Enum.uniq(alice))
    show("bob's calls ran in worker pids", Enum.uniq(bob))

    # Session data lives in Elixir (Snakepit.Bridge.SessionStore), per
    # session; execute_in_session created both sessions on their first call.
    alias Snakepit.Bridge.SessionStore
    :ok = SessionStore.store_program("alice", "model", %{weights: [1, 2, 3]})
    show("alice's program", SessionStore.get_program("alice", "model"))
    show("bob cannot see it", SessionStore.get_program("bob", "model"))

    :ok = SessionStore.delete_session("alice")
    :ok = SessionStore.delete_session("bob")
    show("after delete", SessionStore.get_session("alice"))
  end
end

GrpcSessions.run()
