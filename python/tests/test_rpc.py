"""BridgeService RPCs against a real in-process grpc.aio server."""

from __future__ import annotations

import asyncio
import time

from helpers import WAIT_S, request, result_of, run, running_worker
from sample_adapters import LegacyAdapter, TestAdapter

from snakepit_bridge import serialization
from snakepit_bridge._internal import sessions
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb


def test_ping_echoes_and_reports_worker(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir, worker_id="w-7") as (_, stub):
            before = time.time_ns() // 1000
            resp = await stub.Ping(pb.PingRequest(message="hello"))
            after = time.time_ns() // 1000
            assert resp.message == "hello"
            assert resp.worker_id == "w-7"
            assert before <= resp.server_time_us <= after

    run(go())


def test_heartbeat(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.Heartbeat(pb.HeartbeatRequest(worker_id="x", timestamp_us=1))
            assert resp.ok
            assert resp.timestamp_us > 0

    run(go())


def test_initialize_runs_once_before_requests(sock_dir):
    adapter = TestAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            assert adapter.init_calls == 1
            await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))
            assert adapter.init_calls == 1
        assert adapter.cleanup_calls == 1

    run(go())


def test_execute_tool_success_keeps_integers(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(request("add", {"a": 2, "b": 3}))
            assert resp.success
            assert resp.result_json == b"5"
            assert not resp.has_binary_result
            assert resp.execution_time_us >= 0
            big = await stub.ExecuteTool(request("add", {"a": 2**64, "b": 1}))
            assert result_of(big) == 2**64 + 1
            assert result_of(await stub.ExecuteTool(request("async_add", {"a": 1, "b": 1}))) == 2

    run(go())


def test_empty_args_mean_empty_dict(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(pb.ExecuteToolRequest(tool_name="blob"))
            assert resp.success and resp.binary_result == bytes(range(4))

    run(go())


def test_bytes_result_is_binary(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(request("blob", {"size": 3}))
            assert resp.success and resp.has_binary_result
            assert resp.binary_result == b"\x00\x01\x02"
            assert resp.result_json == b""

    run(go())


def test_binary_parameters_arrive_as_bytes(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(
                request("binary_len", {"label": "x"}, binary={"data": b"\xff" * 10})
            )
            assert result_of(resp) == {"len": 10, "type": "bytes", "label": "x"}

    run(go())


def test_tool_exception_maps_to_tool_error(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(request("fail", {"message": "bad input"}))
            assert not resp.success
            assert resp.error.type == "ValueError"
            assert resp.error.message == "bad input"
            assert resp.error.kind == "tool"
            assert "Traceback" in resp.error.traceback
            assert "raise ValueError(message)" in resp.error.traceback
            # the worker is still fine afterwards
            assert result_of(await stub.ExecuteTool(request("add", {"a": 1, "b": 1}))) == 2

    run(go())


def test_unknown_tool(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(request("nope", {}))
            assert not resp.success
            assert resp.error.type == "ToolNotFoundError"
            assert resp.error.kind == "unknown_tool"
            assert "unknown tool 'nope'" in resp.error.message
            assert "add" in resp.error.message and "count" in resp.error.message
            assert (await stub.Ping(pb.PingRequest(message="still up"))).message == "still up"

    run(go())


def test_argument_errors(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(request("add", {"a": 1}))
            assert not resp.success
            assert resp.error.type == "TypeError"
            assert resp.error.kind == "invalid_arguments"
            assert resp.error.message == "tool 'add' is missing required argument 'b'"
            resp = await stub.ExecuteTool(request("add", {"a": 1, "b": 2, "zzz": 3}))
            assert "unexpected argument 'zzz'" in resp.error.message

    run(go())


def test_malformed_args_json(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            resp = await stub.ExecuteTool(pb.ExecuteToolRequest(tool_name="add", args_json=b"{oops"))
            assert not resp.success and resp.error.kind == "serialization"
            resp = await stub.ExecuteTool(pb.ExecuteToolRequest(tool_name="add", args_json=b"[1,2]"))
            assert not resp.success and resp.error.kind == "serialization"
            assert "JSON object" in resp.error.message

    run(go())


def test_unserializable_result_uses_marker(sock_dir, monkeypatch):
    monkeypatch.delenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", raising=False)

    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            out = result_of(await stub.ExecuteTool(request("unserializable")))
            assert out == {"ok": 1, "thing": {"__ffi_unserializable__": True, "__type__": "builtins.object"}}

    run(go())


def test_streaming_tool_via_execute_tool_is_refused(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            for name in ("count", "acount", "sender"):
                resp = await stub.ExecuteTool(request(name, {"items": []} if name == "sender" else {}))
                assert not resp.success
                assert resp.error.kind == "streaming_tool"
                assert resp.error.type == "StreamingToolError"
                assert "execute_stream" in resp.error.message

    run(go())


def test_slow_sync_tool_does_not_block_other_calls(sock_dir):
    adapter = TestAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            slow = asyncio.ensure_future(stub.ExecuteTool(request("blocking")))
            loop = asyncio.get_running_loop()
            entered = await loop.run_in_executor(None, adapter.gate.entered.wait, WAIT_S)
            assert entered
            # While the tool is blocked in its thread, other RPCs are served.
            assert (await stub.Heartbeat(pb.HeartbeatRequest())).ok
            assert result_of(await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))) == 3
            assert not slow.done()
            adapter.gate.release.set()
            assert result_of(await asyncio.wait_for(slow, WAIT_S)) == "released"

    run(go())


def test_session_context_is_per_call(sock_dir):
    adapter = TestAdapter()

    async def go():
        async with running_worker(adapter, sock_dir, worker_id="w1") as (_, stub):
            out = result_of(
                await stub.ExecuteTool(
                    request("context_info", session_id="s-1", metadata={"correlation_id": "c-9"})
                )
            )
            assert out == {
                "session_id": "s-1",
                "request_id": "",
                "tool_name": "context_info",
                "metadata": {"correlation_id": "c-9"},
                "worker_id": "w1",
            }
            out2 = result_of(await stub.ExecuteTool(request("async_context_info", session_id="s-2")))
            assert out2 == {"session_id": "s-2"}
            # outside a call there is no context
            assert adapter.session_context is None

    run(go())


def test_sessions_table(sock_dir, monkeypatch):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            missing = await stub.GetSession(pb.GetSessionRequest(session_id="s1"))
            assert not missing.found
            init = await stub.InitializeSession(
                pb.InitializeSessionRequest(session_id="s1", config_json=b'{"user": "u1", "n": 3}')
            )
            assert init.success
            names = {t.name for t in init.tools}
            assert {"add", "count", "sender"} <= names
            add_spec = next(t for t in init.tools if t.name == "add")
            assert [p.name for p in add_spec.parameters] == ["a", "b"]
            assert next(t for t in init.tools if t.name == "count").supports_streaming

            got = await stub.GetSession(pb.GetSessionRequest(session_id="s1"))
            assert got.found and got.session_id == "s1"
            assert serialization.loads(got.metadata_json) == {"user": "u1", "n": 3}
            assert got.created_at_ms > 0 and got.last_accessed_ms >= got.created_at_ms
            assert got.tool_count == len(init.tools)

            # A call in the session touches it: with a clock that has moved
            # on, its last access is that clock's time.
            monkeypatch.setattr(sessions, "now_ms", lambda: 10**13)
            await stub.ExecuteTool(request("add", {"a": 1, "b": 1}, session_id="s1"))
            touched = await stub.GetSession(pb.GetSessionRequest(session_id="s1"))
            assert touched.last_accessed_ms == 10**13

            cleaned = await stub.CleanupSession(pb.CleanupSessionRequest(session_id="s1"))
            assert cleaned.success and cleaned.resources_cleaned == 1
            again = await stub.CleanupSession(pb.CleanupSessionRequest(session_id="s1"))
            assert again.success and again.resources_cleaned == 0
            assert not (await stub.GetSession(pb.GetSessionRequest(session_id="s1"))).found

            bad = await stub.InitializeSession(pb.InitializeSessionRequest(session_id=""))
            assert not bad.success and "session_id" in bad.error_message

    run(go())


def test_legacy_execute_tool_adapter(sock_dir):
    async def go():
        async with running_worker(LegacyAdapter(), sock_dir) as (_, stub):
            out = result_of(await stub.ExecuteTool(request("whoami", {"x": 1}, session_id="s")))
            assert out == {"tool": "whoami", "args": {"x": 1}, "session_id": "s"}
            resp = await stub.ExecuteTool(request("missing"))
            assert not resp.success and resp.error.type == "KeyError"
            chunks = [c async for c in stub.ExecuteStreamingTool(request("numbers"))]
            assert [c.data for c in chunks] == [b"0", b"1", b"2", b""]
            assert chunks[-1].is_final

    run(go())
