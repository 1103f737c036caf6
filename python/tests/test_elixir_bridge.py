"""Calls from Python back into Elixir, against a fake ElixirBridge server."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from helpers import WAIT_S, fake_bridge, finish, read_handshake, request, result_of, run, running_worker, spawn_worker

from snakepit_bridge import BaseAdapter, SessionContext, tool
from snakepit_bridge._internal.elixir_bridge import bridge_channel_options
from snakepit_bridge.adapters.showcase import ShowcaseAdapter
from snakepit_bridge.errors import ElixirBridgeUnavailable, ElixirToolError
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc


class Caller(BaseAdapter):
    @tool
    def call(self, name: str, params: dict) -> object:
        return self.session_context.call_elixir_tool(name, params)

    @tool
    def call_kwargs(self) -> object:
        return self.session_context.call_elixir_tool("add", a=2, b=40)

    @tool
    def via_proxy(self) -> object:
        tools = self.session_context.elixir_tools
        return {
            "item": tools["add"](a=1, b=2),
            "attr": tools.add({"a": 3}, b=4),
            "names": sorted(tools),
            "has_add": "add" in tools,
        }

    @tool
    async def async_call(self) -> object:
        return await self.session_context.acall_elixir_tool("add", {"a": 5, "b": 5})

    @tool
    def send_bytes(self) -> object:
        return self.session_context.call_elixir_tool("bytes_len", {"data": b"\x00" * 7})

    @tool
    def get_bytes(self) -> object:
        return self.session_context.call_elixir_tool("echo_binary")

    @tool
    def failing(self) -> object:
        try:
            self.session_context.call_elixir_tool("fail", {})
        except ElixirToolError as exc:
            return {"type": exc.error_type, "message": exc.message, "kind": exc.kind, "text": str(exc)}
        return None


def test_tools_are_registered_at_startup(sock_dir):
    async def go():
        async with fake_bridge(sock_dir) as (fake, address):
            async with running_worker(ShowcaseAdapter(), sock_dir, worker_id="w9", elixir_address=address):
                assert len(fake.registered) == 1
                req = fake.registered[0]
                assert req.worker_id == "w9"
                specs = {t.name: t for t in req.tools}
                assert {"ping", "add", "stream_data", "call_elixir_demo"} <= set(specs)
                add = specs["add"]
                assert [(p.name, p.required) for p in add.parameters] == [("a", True), ("b", True)]
                assert specs["stream_data"].supports_streaming
                assert {p.name: p.default_json for p in specs["stream_data"].parameters} == {
                    "count": "5",
                    "delay": "0.0",
                }
                assert specs["process_text"].description

    run(go())


def test_call_elixir_tool_forms(sock_dir):
    async def go():
        async with fake_bridge(sock_dir) as (fake, address):
            async with running_worker(Caller(), sock_dir, elixir_address=address) as (_, stub):
                out = result_of(await stub.ExecuteTool(
                    request("call", {"name": "add", "params": {"a": 1, "b": 2}}, session_id="sess",
                            metadata={"correlation_id": "corr-1"})
                ))
                assert out == {"sum": 3}
                call = fake.calls[-1]
                assert call.session_id == "sess" and call.tool_name == "add"
                assert call.metadata["correlation_id"] == "corr-1"
                assert call.metadata["caller_tool"] == "call"

                assert result_of(await stub.ExecuteTool(request("call_kwargs"))) == {"sum": 42}
                assert result_of(await stub.ExecuteTool(request("async_call"))) == {"sum": 10}
                proxy = result_of(await stub.ExecuteTool(request("via_proxy")))
                assert proxy["item"] == {"sum": 3} and proxy["attr"] == {"sum": 7}
                assert "add" in proxy["names"] and proxy["has_add"] is True

                assert result_of(await stub.ExecuteTool(request("send_bytes"))) == {"len": 7}
                assert fake.calls[-1].binary_parameters["data"] == b"\x00" * 7
                assert result_of(await stub.ExecuteTool(request("get_bytes"))) == b"\x00\x01"

                failed = result_of(await stub.ExecuteTool(request("failing")))
                assert failed["type"] == "ArgumentError"
                assert failed["message"] == "elixir says no"
                assert "Elixir tool 'fail' failed" in failed["text"]

    run(go())


def test_showcase_call_elixir_demo(sock_dir):
    async def go():
        async with fake_bridge(sock_dir) as (_, address):
            async with running_worker(ShowcaseAdapter(), sock_dir, elixir_address=address) as (_, stub):
                out = result_of(await stub.ExecuteTool(
                    request("call_elixir_demo", {"tool_name": "parse_json", "json_string": '{"test": true}'},
                            session_id="s1")
                ))
                assert out == {"tool": "parse_json", "result": {"test": True}, "session_id": "s1", "success": True}

    run(go())


def test_elixir_error_propagates_as_tool_error(sock_dir):
    async def go():
        async with fake_bridge(sock_dir) as (_, address):
            async with running_worker(Caller(), sock_dir, elixir_address=address) as (_, stub):
                resp = await stub.ExecuteTool(request("call", {"name": "fail", "params": {}}))
                assert not resp.success
                assert resp.error.type == "ElixirToolError"
                assert resp.error.kind == "tool"
                assert "elixir says no" in resp.error.message

    run(go())


def test_no_bridge_configured(sock_dir):
    async def go():
        async with running_worker(Caller(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(request("call", {"name": "add", "params": {}}))
            assert not resp.success
            assert resp.error.type == "ElixirBridgeUnavailable"
            assert "--elixir-address" in resp.error.message

    run(go())

    with pytest.raises(ElixirBridgeUnavailable):
        SessionContext("s").call_elixir_tool("x")


def test_unreachable_bridge_is_not_fatal(sock_dir):
    address = f"unix:{sock_dir}/w.sock"

    async def go():
        proc = await spawn_worker("--address", address, "--elixir-address", f"unix:{sock_dir}/nobody-home.sock",
                                  "--log-level", "info")
        line = await read_handshake(proc)
        assert line == f"SNAKEPIT_READY {address}"
        proc.terminate()
        code, _, stderr = await finish(proc)
        assert code == 0
        assert "could not register tools with Elixir" in stderr

    run(go())


def test_worker_subprocess_registers_with_bridge(sock_dir):
    address = f"unix:{sock_dir}/w.sock"

    async def go():
        async with fake_bridge(sock_dir) as (fake, bridge_address):
            proc = await spawn_worker("--address", address, "--elixir-address", bridge_address, "--worker-id", "wx")
            assert (await read_handshake(proc)).startswith("SNAKEPIT_READY")
            # registration happens before READY
            assert fake.registered and fake.registered[0].worker_id == "wx"
            proc.terminate()
            code, _, stderr = await finish(proc)
            assert code == 0, stderr

    run(go())


def test_telemetry_stream_protocol_against_fake_bridge_server(sock_dir):
    """Protocol test: what the worker sends on StreamTelemetry and how it applies
    TelemetryControl messages, against the fake bridge server of helpers.py.
    Telemetry reaching Snakepit's own (Elixir) bridge is not tested here."""

    async def go():
        async with fake_bridge(sock_dir) as (fake, address):
            async with running_worker(ShowcaseAdapter(), sock_dir, worker_id="wt", elixir_address=address) as (_, stub):
                await stub.ExecuteTool(request("add", {"a": 1, "b": 2}, metadata={"correlation_id": "cid-1"}))

                async def wait_for(pred):
                    while not pred():
                        fake.telemetry_event.clear()
                        await asyncio.wait_for(fake.telemetry_event.wait(), WAIT_S)

                def names():
                    return [tuple(e.event_parts) for e in fake.telemetry]

                await wait_for(lambda: ("tool", "execution", "stop") in names())
                stop = next(e for e in fake.telemetry if tuple(e.event_parts) == ("tool", "execution", "stop"))
                assert stop.worker_id == "wt"
                assert stop.correlation_id == "cid-1"
                assert b'"duration"' in stop.measurements_json
                assert b'"tool":"add"' in stop.metadata_json

                # Control messages from Elixir are applied as they arrive.
                from snakepit_bridge import telemetry

                applied: asyncio.Queue = asyncio.Queue()
                telemetry.hub.add_control_listener(applied.put_nowait)

                # Elixir turns telemetry off: tool calls emit nothing ...
                await fake.controls.put(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False)))
                await asyncio.wait_for(applied.get(), WAIT_S)
                assert not telemetry.is_enabled()
                count = len(fake.telemetry)
                await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))
                # ... then back on, with a filter admitting only the showcase's span events.
                await fake.controls.put(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=True)))
                await fake.controls.put(
                    pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["python.showcase.*"]))
                )
                await asyncio.wait_for(applied.get(), WAIT_S)
                await asyncio.wait_for(applied.get(), WAIT_S)
                assert telemetry.is_enabled() and telemetry.hub.allow == ["python.showcase.*"]
                await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))
                await stub.ExecuteTool(request("ml_analyze_text", {"text": "good day"}))
                await wait_for(lambda: ("span", "stop") in names()[count:])
                later = fake.telemetry[count:]
                # A span travels as ["span", phase] with the user's name beside.
                assert [(tuple(e.event_parts), e.name) for e in later] == [
                    (("span", "start"), "showcase.ml_analyze_text"),
                    (("span", "stop"), "showcase.ml_analyze_text"),
                ]

                # Forwarding off (nobody listens in Elixir): nothing is sent,
                # but a control with a seq is still acknowledged, in order.
                count = len(fake.telemetry)
                await fake.controls.put(
                    pb.TelemetryControl(forwarding=pb.TelemetryForwarding(active=False), seq=7)
                )
                await wait_for(lambda: any(e.control_ack == 7 for e in fake.telemetry[count:]))
                assert not telemetry.hub.forwarding
                await stub.ExecuteTool(request("ml_analyze_text", {"text": "good day"}))
                await fake.controls.put(pb.TelemetryControl(forwarding=pb.TelemetryForwarding(active=True), seq=8))
                await wait_for(lambda: any(e.control_ack == 8 for e in fake.telemetry[count:]))
                assert [e.control_ack for e in fake.telemetry[count:]] == [7, 8]

    run(go())


class _NoTelemetryBridge(pb_grpc.ElixirBridgeServicer):
    """A bridge that, like Snakepit's own, does not collect telemetry."""

    async def RegisterTools(self, request, context):
        return pb.RegisterToolsResponse(success=True)

    async def StreamTelemetry(self, request_iterator, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no telemetry here")
        yield pb.TelemetryControl()  # pragma: no cover - makes this a stream handler


def test_unimplemented_telemetry_leaves_no_pending_request_feeder(sock_dir):
    async def go():
        server = grpc.aio.server()
        pb_grpc.add_ElixirBridgeServicer_to_server(_NoTelemetryBridge(), server)
        address = f"unix:{sock_dir}/quiet-bridge.sock"
        server.add_insecure_port(address)
        await server.start()
        try:
            async with running_worker(ShowcaseAdapter(), sock_dir, elixir_address=address) as (worker, _):
                task = worker._telemetry_stream._task
                await asyncio.wait_for(asyncio.shield(task), WAIT_S)

                def feeders():
                    return [
                        t for t in asyncio.all_tasks()
                        if "_consume_request_iterator" in repr(t.get_coro()) and not t.done()
                    ]

                # The task feeding the request iterator ends with the call.
                for _ in range(100):
                    if not feeders():
                        break
                    await asyncio.sleep(0)
                assert feeders() == []
        finally:
            await server.stop(0)

    run(go())


def test_unix_bridge_channels_announce_localhost_as_authority():
    # grpc-core would send the percent-encoded socket path, which HTTP/2
    # servers that check :authority (Snakepit's Rust bridge) reject.
    assert ("grpc.default_authority", "localhost") in bridge_channel_options("unix:/tmp/b.sock")
    assert all(key != "grpc.default_authority" for key, _ in bridge_channel_options("127.0.0.1:5000"))


class _RestartingBridge(pb_grpc.ElixirBridgeServicer):
    """A bridge being replaced: it refuses the first calls as Snakepit's does
    while it stops ("the call was not run"), then serves."""

    def __init__(self, refusals: int, details: str):
        self.refusals = refusals
        self.details = details
        self.calls = 0

    async def ExecuteElixirTool(self, request, context):
        self.calls += 1
        if self.calls <= self.refusals:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.details)
        return pb.ExecuteToolResponse(success=True, result_json=b'{"ok": 1}')


@pytest.mark.parametrize("use_async", [False, True])
def test_a_call_refused_unrun_by_a_stopping_bridge_is_sent_again(sock_dir, use_async):
    from snakepit_bridge._internal.elixir_bridge import ElixirBridgeClient

    async def go():
        refused = "the Elixir bridge is shutting down; the call was not run"
        for refusals, details, expect_ok in [
            (2, refused, True),
            # Refused while it may have run: never sent twice.
            (1, "the Elixir bridge is shutting down", False),
        ]:
            bridge = _RestartingBridge(refusals, details)
            server = grpc.aio.server()
            pb_grpc.add_ElixirBridgeServicer_to_server(bridge, server)
            address = f"unix:{sock_dir}/restarting-{refusals}.sock"
            server.add_insecure_port(address)
            await server.start()
            client = ElixirBridgeClient(address)
            try:
                if use_async:
                    call = client.aexecute_tool("s", "t", {}, timeout_s=5)
                else:
                    call = asyncio.to_thread(client.execute_tool, "s", "t", {}, timeout_s=5)
                if expect_ok:
                    assert await call == {"ok": 1}
                    assert bridge.calls == refusals + 1
                else:
                    with pytest.raises(ElixirBridgeUnavailable):
                        await call
                    assert bridge.calls == 1
            finally:
                await server.stop(0)

    run(go())
