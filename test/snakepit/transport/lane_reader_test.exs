defmodule Snakepit.Transport.LaneReaderTest do
  # The lane's reader and the native core against a stand-in for the
  # worker's end of the socket, which sends what a real worker never does:
  # replies to calls nobody waits for, undecodable replies, messages that
  # are not lane messages, a length past the limit. Real workers on the
  # lane: call_transport_test.exs.
  use ExUnit.Case, async: true

  alias Snakepit.Native
  alias Snakepit.Transport.LaneReader

  @hello 1
  @call 2
  @reply 3

  setup do
    path = Path.join(System.tmp_dir!(), "lane-reader-#{System.unique_integer([:positive])}")

    {:ok, listener} =
      :gen_tcp.listen(0, [:local, :binary, ifaddr: {:local, path}, packet: 4, active: false])

    on_exit(fn -> File.rm(path) end)

    {:ok, reader, lane} = LaneReader.start_link(path)
    {:ok, peer} = :gen_tcp.accept(listener, 5_000)
    # The first message is the VM's greeting, with its secret.
    assert {:ok, <<@hello, 0, 0::16, 0::little-64, secret::binary>>} =
             :gen_tcp.recv(peer, 0, 5_000)

    assert byte_size(secret) > 0
    %{reader: reader, lane: lane, peer: peer}
  end

  # Sends a call on the lane; returns its reference and the call id the
  # stand-in received it under.
  defp call(lane, peer) do
    ref = make_ref()
    {:ok, id} = Native.lane_execute(lane, self(), ref, "add", %{a: 1, b: 2}, %{})

    assert {:ok, <<@call, 0, 0::16, ^id::little-64, request::binary>>} =
             :gen_tcp.recv(peer, 0, 5_000)

    assert request =~ "add"
    {ref, id}
  end

  defp reply(peer, id, body), do: :gen_tcp.send(peer, <<@reply, 0, 0::16, id::little-64>> <> body)

  # ExecuteToolResponse{success: true, result_json: json}
  defp success(json), do: <<8, 1, 18, byte_size(json)>> <> json

  test "a reply reaches its caller; one for a call nobody waits for is dropped", ctx do
    {ref, id} = call(ctx.lane, ctx.peer)
    :ok = reply(ctx.peer, id + 1_000, success(~s({"result": 0})))
    :ok = reply(ctx.peer, id, success(~s({"result": 3})))
    assert_receive {^ref, {:ok, %{"result" => 3}}}, 5_000
    refute_received {_, {:ok, %{"result" => 0}}}
    assert Process.alive?(ctx.reader)
  end

  test "an undecodable reply is an error for its caller; the lane goes on", ctx do
    {ref, id} = call(ctx.lane, ctx.peer)
    :ok = reply(ctx.peer, id, <<255, 255, 255>>)
    assert_receive {^ref, {:error, {:internal, "malformed reply from the worker" <> _}}}, 5_000

    {ref, id} = call(ctx.lane, ctx.peer)
    :ok = reply(ctx.peer, id, success("7"))
    assert_receive {^ref, {:ok, 7}}, 5_000
  end

  test "a message without a lane header closes the lane: the waiting caller hears why", ctx do
    monitor = Process.monitor(ctx.reader)
    {ref, _id} = call(ctx.lane, ctx.peer)
    :ok = :gen_tcp.send(ctx.peer, <<@reply, 0>>)

    assert_receive {^ref,
                    {:error, {:unavailable, "the worker sent a malformed lane message" <> _}}},
                   5_000

    assert_receive {:DOWN, ^monitor, :process, _, :normal}, 5_000
    # Later calls are refused at once, with the same reason.
    assert {:error, {:unavailable, "the worker sent a malformed lane message" <> _}} =
             Native.lane_execute(ctx.lane, self(), make_ref(), "add", %{}, %{})
  end

  test "a length past max_message_bytes closes the lane", ctx do
    {ref, _id} = call(ctx.lane, ctx.peer)
    :ok = :inet.setopts(ctx.peer, packet: :raw)
    :ok = :gen_tcp.send(ctx.peer, <<0xFFFF_FFF0::32, @reply, 0, 0::16>>)
    assert_receive {^ref, {:error, {:unavailable, "the lane failed: " <> _}}}, 5_000
  end

  test "the worker's end closing fails the waiting call", ctx do
    {ref, _id} = call(ctx.lane, ctx.peer)
    :ok = :gen_tcp.close(ctx.peer)
    assert_receive {^ref, {:error, {:unavailable, "the worker closed its lane"}}}, 5_000
  end

  test "a descriptor that is not a Unix stream socket is refused" do
    {:ok, udp} = :gen_udp.open(0)
    {:ok, fd} = :inet.getfd(udp)
    assert {:error, {_kind, message}} = Native.lane_attach(fd)
    assert message =~ "not a Unix stream socket"
    :gen_udp.close(udp)
  end
end
