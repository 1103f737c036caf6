defmodule Snakepit.TransportAuthTest do
  # Real workers over both transports: a local process that Snakepit did
  # not start is refused on every port the VM and its workers listen on,
  # and the secret never shows on a command line or in a log.
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureLog

  alias Snakepit.Test.AppPool

  defp start(transport) do
    Application.put_env(:snakepit, :worker_transport, transport)
    on_exit(fn -> Application.delete_env(:snakepit, :worker_transport) end)
    AppPool.start!(pool_size: 1, instance_token: "isolation-token-42")
  end

  defp worker do
    [id] = Snakepit.list_workers()
    {:ok, meta} = Snakepit.Pool.Registry.get_worker_metadata(id)
    meta
  end

  # The secret as the worker got it: only a process of the same user can
  # read another's environment.
  defp secret_of(os_pid) do
    "/proc/#{os_pid}/environ"
    |> File.read!()
    |> String.split(<<0>>)
    |> Enum.find_value(fn
      "SNAKEPIT_AUTH_TOKEN=" <> token -> token
      _ -> nil
    end)
  end

  defp intrude(args) do
    {:ok, python} = Snakepit.PythonRuntime.executable()
    script = Path.join(AppPool.fixtures_dir(), "intruder.py")
    env = [{"PYTHONPATH", Enum.join(Snakepit.PythonRuntime.python_path(), ":")}]
    {out, 0} = System.cmd(python, [script | args], env: env)
    JSON.decode!(out)
  end

  defp refusals do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      Snakepit.Telemetry.attach(
        id,
        [:snakepit, :security, :unauthenticated],
        fn _, _, meta, _ -> send(test, {:refused, meta.server, meta.reason}) end,
        nil
      )

    on_exit(fn -> Snakepit.Telemetry.detach(id) end)
  end

  for transport <- [:tcp, :unix] do
    @tag transport: transport
    test "over #{transport}: no secret or a wrong one is refused everywhere; ours works",
         %{transport: transport} do
      start(transport)
      refusals()
      meta = worker()
      bridge = Snakepit.GRPC.BridgeServer.address()
      assert String.starts_with?(bridge, if(transport == :tcp, do: "127.0.0.1:", else: "unix:"))

      for secret_args <- [[], ["wrong-secret-0000"]] do
        results = intrude([meta.address, bridge | secret_args])
        assert map_size(results) == 7

        assert Enum.all?(results, fn {_rpc, code} -> code == "UNAUTHENTICATED" end),
               inspect(results)
      end

      for reason <- [:missing, :wrong], _rpc <- 1..3 do
        assert_receive {:refused, :bridge, ^reason}
      end

      # The real secret opens the door: the check is the only thing in the way.
      secret = secret_of(meta.os_pid)
      assert byte_size(secret) == 64
      results = intrude([meta.address, bridge, secret])
      assert results["worker.ExecuteTool"] == "OK"
      assert results["bridge.GetExposedElixirTools"] == "OK"

      # Snakepit's own calls, streams, sessions and heartbeats keep working.
      assert {:ok, %{"message" => "pong"}} = Snakepit.execute("ping", %{})
      parent = self()

      assert :ok =
               Snakepit.execute_stream("stream_data", %{count: 2}, &send(parent, {:chunk, &1}))

      assert_receive {:chunk, %{"is_final" => true}}
      assert {:ok, _} = Snakepit.execute_in_session("s-auth", "ping", %{})
    end
  end

  test "neither the secret nor the instance token is on a command line" do
    start(:unix)
    meta = worker()
    secret = secret_of(meta.os_pid)
    [fork_server] = Snakepit.Worker.ForkServer.os_pids()

    for os_pid <- [meta.os_pid, fork_server] do
      cmdline = File.read!("/proc/#{os_pid}/cmdline")
      refute cmdline =~ secret
      refute cmdline =~ "isolation-token-42"
      assert cmdline =~ "--snakepit-run-id"
    end

    # The token is still found where cleanup looks for it.
    assert meta.os_pid in Snakepit.ProcessKiller.find_by_run_id(
             Snakepit.RunID.current(),
             Snakepit.Config.instance_filters()
           )
  end

  test "a crashing worker's log holds no secret" do
    start(:unix)
    meta = worker()
    secret = secret_of(meta.os_pid)

    log =
      Snakepit.Logger.with_level(:debug, fn ->
        capture_log([level: :debug], fn ->
          Snakepit.ProcessKiller.kill_process(meta.os_pid, :sigkill)
          assert AppPool.await_workers(1, without: [meta.os_pid], timeout: 20_000) != :timeout
        end)
      end)

    assert log =~ "SIGKILL"
    refute log =~ secret
  end
end

defmodule Snakepit.TcpHostTest do
  use ExUnit.Case, async: false
  @moduletag :python

  import ExUnit.CaptureLog

  alias Snakepit.Test.AppPool

  setup do
    for {k, v} <- [worker_transport: :tcp, tcp_host: "0.0.0.0"],
        do: Application.put_env(:snakepit, k, v)

    on_exit(fn ->
      for k <- [:worker_transport, :tcp_host, :allow_non_loopback_bind],
          do: Application.delete_env(:snakepit, k)

      # AppPool's own on_exit runs first and restarts Snakepit while these
      # keys are still set: restart it once more without them, so the next
      # module does not inherit a bridge on 0.0.0.0.
      Application.stop(:snakepit)
      {:ok, _} = Application.ensure_all_started(:snakepit)
    end)
  end

  test "a non-loopback tcp_host is refused at start unless explicitly allowed, with a warning" do
    Application.stop(:snakepit)

    assert {:error, {:snakepit, {{:invalid_config, message}, _}}} =
             Application.ensure_all_started(:snakepit)

    assert message =~ "not a loopback address"
    assert message =~ "allow_non_loopback_bind"

    Application.put_env(:snakepit, :allow_non_loopback_bind, true)

    log = capture_log(fn -> AppPool.start!(pool_size: 1) end)

    assert log =~ "other machines may reach"
    assert Snakepit.GRPC.BridgeServer.address() =~ "0.0.0.0:"
    assert {:ok, _} = Snakepit.execute("ping", %{})
  end
end
