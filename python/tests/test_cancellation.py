"""CancelTool against a real in-process grpc.aio worker: sync tools are
stopped in their thread, async tools are cancelled, a stubborn tool is
reported as still running, and a stop never leaks into another call."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from helpers import WAIT_S, request, result_of, run, running_worker

from snakepit_bridge import BaseAdapter, tool
from snakepit_bridge.errors import CallCancelled
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb


class CancelAdapter(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.stopped = threading.Event()
        self.completed = threading.Event()
        self.closed = threading.Event()
        self.steps = 0

    @tool
    def spin(self, steps: int = 10_000) -> int:
        """Pure Python work: a cooperative stop takes effect at once."""
        self.entered.set()
        try:
            for _ in range(steps):
                self.steps += 1
                time.sleep(0.001)
            self.completed.set()
            return self.steps
        except CallCancelled:
            self.stopped.set()
            raise

    @tool
    def swallow_everything(self, steps: int = 10_000) -> str:
        """`except Exception` does not swallow the stop."""
        self.entered.set()
        try:
            for _ in range(steps):
                try:
                    time.sleep(0.001)
                except Exception:  # noqa: BLE001
                    pass
        finally:
            self.stopped.set()
        return "never"

    @tool
    async def wait_async(self, seconds: float = 30.0) -> str:
        self.entered.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.stopped.set()
            raise
        return "done"

    @tool
    def stubborn(self, seconds: float = 0.6) -> str:
        """One long C call: the stop waits until it returns."""
        self.entered.set()
        time.sleep(seconds)
        self.completed.set()
        return "slept"

    @tool
    def add(self, a: int, b: int) -> int:
        return a + b

    @tool
    def count(self, n: int = 100_000):
        self.entered.set()
        try:
            for i in range(n):
                time.sleep(0.001)
                yield i
        finally:
            self.closed.set()


def with_id(req, request_id):
    req.request_id = request_id
    return req


async def entered(event: threading.Event) -> None:
    assert await asyncio.get_running_loop().run_in_executor(None, event.wait, WAIT_S)


def test_a_sync_tool_is_interrupted_in_its_thread(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (worker, stub):
            call = asyncio.ensure_future(stub.ExecuteTool(with_id(request("spin"), "r1")))
            await entered(adapter.entered)
            resp = await stub.CancelTool(pb.CancelToolRequest(request_id="r1", wait_ms=5_000))
            assert resp.state == "interrupted"
            reply = await call
            assert not reply.success
            assert reply.error.kind == "cancelled"
            assert reply.error.type == "CallCancelled"
            assert adapter.stopped.is_set() and not adapter.completed.is_set()
            assert worker.runner.calls.active_count() == 0
            # The pool thread is fine afterwards.
            assert result_of(await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))) == 3
            # Asking again tells the same story.
            again = await stub.CancelTool(pb.CancelToolRequest(request_id="r1", wait_ms=0))
            assert again.state == "interrupted"

    run(go())


def test_except_exception_does_not_swallow_the_stop(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            call = asyncio.ensure_future(stub.ExecuteTool(with_id(request("swallow_everything"), "r2")))
            await entered(adapter.entered)
            resp = await stub.CancelTool(pb.CancelToolRequest(request_id="r2", wait_ms=5_000))
            assert resp.state == "interrupted"
            assert (await call).error.kind == "cancelled"

    run(go())


def test_an_async_tool_is_cancelled(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (worker, stub):
            call = asyncio.ensure_future(stub.ExecuteTool(with_id(request("wait_async"), "r3")))
            await entered(adapter.entered)
            resp = await stub.CancelTool(pb.CancelToolRequest(request_id="r3", wait_ms=5_000))
            assert resp.state == "cancelled"
            assert adapter.stopped.is_set()
            assert (await call).error.kind == "cancelled"
            assert worker.runner.calls.active_count() == 0

    run(go())


def test_a_tool_inside_a_long_c_call_is_reported_running_then_stops(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            call = asyncio.ensure_future(stub.ExecuteTool(with_id(request("stubborn", {"seconds": 0.8}), "r4")))
            await entered(adapter.entered)
            first = await stub.CancelTool(pb.CancelToolRequest(request_id="r4", wait_ms=100))
            assert first.state == "running"
            later = await stub.CancelTool(pb.CancelToolRequest(request_id="r4", wait_ms=int(WAIT_S * 1000)))
            # The exception fires as soon as the sleep returns.
            assert later.state == "interrupted"
            assert not adapter.completed.is_set()
            assert (await call).error.kind == "cancelled"

    run(go())


def test_an_unknown_call_is_refused_when_it_arrives_late(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            resp = await stub.CancelTool(pb.CancelToolRequest(request_id="late", wait_ms=0))
            assert resp.state == "unknown"
            reply = await stub.ExecuteTool(with_id(request("spin", {"steps": 1}), "late"))
            assert reply.error.kind == "cancelled"
            assert not adapter.entered.is_set()

    run(go())


def test_the_client_deadline_stops_a_sync_tool(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ExecuteTool(with_id(request("spin"), "r5"), timeout=0.3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await asyncio.get_running_loop().run_in_executor(None, adapter.stopped.wait, WAIT_S)
            assert not adapter.completed.is_set()

    run(go())


def test_a_sync_stream_producer_is_interrupted(sock_dir):
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (worker, stub):
            stream = stub.ExecuteStreamingTool(with_id(request("count"), "r6"))
            first = await stream.read()
            assert first.chunk_id == "0"
            resp = await stub.CancelTool(pb.CancelToolRequest(request_id="r6", wait_ms=5_000))
            assert resp.state == "interrupted"
            stream.cancel()
            assert worker.runner.calls.active_count() == 0

    run(go())


def test_a_sync_stream_producer_whose_consumer_left_first_reports_interrupted(sock_dir):
    # The other order, as when Elixir halts a stream: the consumer goes away
    # (the producer gets StreamCancelled at its next item), then CancelTool
    # asks how the call ended. It did not finish by itself.
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (worker, stub):
            stream = stub.ExecuteStreamingTool(with_id(request("count"), "r7"))
            first = await stream.read()
            assert first.chunk_id == "0"
            stream.cancel()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, adapter.closed.wait, WAIT_S)
            resp = await stub.CancelTool(pb.CancelToolRequest(request_id="r7", wait_ms=5_000))
            assert resp.state == "interrupted"
            assert worker.runner.calls.active_count() == 0

    run(go())


def test_a_stop_never_lands_in_another_call(sock_dir):
    # Cancels racing with calls that end by themselves: whatever the timing,
    # the next call on the same threads must not see a CallCancelled.
    adapter = CancelAdapter()

    async def go():
        async with running_worker(adapter, sock_dir, max_workers=1) as (_, stub):
            for n in range(150):
                rid = f"race-{n}"
                call = asyncio.ensure_future(stub.ExecuteTool(with_id(request("add", {"a": n, "b": 1}), rid)))
                await asyncio.sleep(0)
                await stub.CancelTool(pb.CancelToolRequest(request_id=rid, wait_ms=1_000))
                reply = await call
                assert reply.success or reply.error.kind == "cancelled"
                assert result_of(await stub.ExecuteTool(request("add", {"a": n, "b": 2}))) == n + 2

    run(go())
