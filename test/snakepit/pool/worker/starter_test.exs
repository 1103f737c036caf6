defmodule Snakepit.Pool.Worker.StarterTest do
  # The restart policy against a stand-in worker (a unit test of the
  # starter's logic; real workers are restarted in the chaos suite).
  use ExUnit.Case, async: false

  alias Snakepit.Pool.Worker.Starter

  doctest Starter

  defmodule FakeWorker do
    use GenServer
    def start_link(args), do: GenServer.start_link(__MODULE__, args)

    @impl true
    def init(args) do
      send(args.test, {:started, self()})
      if args[:ready], do: send(args.starter, {:snakepit_worker_ready, self()})
      {:ok, args}
    end
  end

  setup do
    policy = %{base_ms: 40, max_ms: 160, stable_ms: 10_000}

    for {key, value} <- [
          worker_restart_backoff_base_ms: policy.base_ms,
          worker_restart_backoff_max_ms: policy.max_ms,
          worker_restart_stable_ms: policy.stable_ms
        ] do
      Application.put_env(:snakepit, key, value)
    end

    on_exit(fn ->
      for key <- [
            :worker_restart_backoff_base_ms,
            :worker_restart_backoff_max_ms,
            :worker_restart_stable_ms
          ],
          do: Application.delete_env(:snakepit, key)
    end)

    :ok
  end

  defp start_starter(extra \\ %{}) do
    id = "starter_test_#{System.unique_integer([:positive])}"

    args =
      Map.merge(
        %{id: id, pool_name: :p, pool_pid: self(), test: self(), worker_module: FakeWorker},
        extra
      )

    {:ok, starter} = Starter.start_link(args)
    assert_receive {:started, worker}
    {starter, worker, id}
  end

  test "a failing slot is restarted for ever, with growing then capped backoff" do
    {starter, worker, id} = start_starter()

    delays =
      Enum.map_reduce(1..6, worker, fn _, worker ->
        Process.exit(worker, :boom)
        assert_receive {:worker_restarting, :p, ^id, %{delay_ms: delay}}
        assert_receive {:started, next}, 1_000
        {delay, next}
      end)
      |> elem(0)

    assert delays == [0, 40, 80, 160, 160, 160]
    assert Process.alive?(starter)
  end

  test "a kill from outside and a hard stop count no failure: restarted at once" do
    {_starter, worker, id} = start_starter()
    Process.exit(worker, :boom)
    assert_receive {:worker_restarting, :p, ^id, %{failures: 1}}
    assert_receive {:started, worker}

    reasons = [
      {:shutdown, {:python_exited, {:signaled, 9}}},
      {:shutdown, {:startup_failed, :unknown}},
      {:shutdown, :hard_stop}
    ]

    Enum.reduce(reasons, worker, fn reason, worker ->
      Process.exit(worker, reason)
      assert_receive {:worker_restarting, :p, ^id, %{delay_ms: 0, failures: 1}}
      assert_receive {:started, next}
      next
    end)
  end

  test "a worker that was ready for the stable time starts the count over" do
    Application.put_env(:snakepit, :worker_restart_stable_ms, 0)
    {_starter, worker, id} = start_starter(%{ready: true})
    Process.exit(worker, :boom)
    assert_receive {:worker_restarting, :p, ^id, %{delay_ms: 0, failures: 1}}
    assert_receive {:started, worker}
    Process.exit(worker, :boom)
    assert_receive {:worker_restarting, :p, ^id, %{delay_ms: 0, failures: 1}}
  end

  test "stopping the starter stops its worker and restarts nothing" do
    {starter, worker, _id} = start_starter()
    ref = Process.monitor(worker)
    Process.unlink(starter)
    Process.exit(starter, :shutdown)
    assert_receive {:DOWN, ^ref, :process, ^worker, :shutdown}
    refute_receive {:started, _}, 100
  end

  test "restart_worker replaces the worker at once" do
    {starter, worker, _id} = start_starter()
    assert {:ok, new} = Starter.restart_worker(starter)
    assert_receive {:started, ^new}
    refute Process.alive?(worker)
    assert Starter.worker_pid(starter) == new
  end
end
