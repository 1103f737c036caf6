"""ExecuteStreamingTool and the producer/consumer channel."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers import WAIT_S, request, run, running_worker
from sample_adapters import TestAdapter

from snakepit_bridge import serialization
from snakepit_bridge.errors import StreamCancelled
from snakepit_bridge.streaming import DONE, ITEM, Channel


async def collect(stub, tool, args=None):
    return [chunk async for chunk in stub.ExecuteStreamingTool(request(tool, args))]


def payloads(chunks):
    return [serialization.loads(c.data) if c.data else None for c in chunks]


def test_sync_generator_stream(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "count", {"n": 3})
            assert [c.chunk_id for c in chunks] == ["0", "1", "2", "3"]
            assert payloads(chunks) == [{"i": 0}, {"i": 1}, {"i": 2}, None]
            assert [c.is_final for c in chunks] == [False, False, False, True]
            assert chunks[-1].data == b""
            assert not chunks[-1].HasField("error")

    run(go())


def test_generator_return_value_is_final_chunk(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "count_with_return", {"n": 2})
            assert payloads(chunks) == [0, 1, {"done": True, "n": 2}]
            assert chunks[-1].is_final and not chunks[0].is_final

    run(go())


def test_async_generator_stream(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "acount", {"n": 2})
            assert payloads(chunks) == [{"i": 0}, {"i": 1}, None]
            assert chunks[-1].is_final

    run(go())


def test_stream_send_with_return_value(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "sender", {"items": ["a", {"b": 1}]})
            assert payloads(chunks) == ["a", {"b": 1}, {"total": 2}]
            assert [c.is_final for c in chunks] == [False, False, True]
            chunks = await collect(stub, "async_sender", {"items": [1, 2]})
            assert payloads(chunks) == [1, 2, None]

    run(go())


def test_explicit_final_chunk_with_metadata_ends_stream(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "explicit_final")
            assert payloads(chunks) == [{"step": 1}, {"step": 2}]
            assert [c.is_final for c in chunks] == [False, True]
            assert dict(chunks[0].metadata) == {"phase": "work"}
            assert dict(chunks[1].metadata) == {"phase": "done", "n": "2"}

    run(go())


def test_binary_chunks(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "binary_stream")
            assert chunks[0].data == b"\x00\x01"
            assert chunks[0].metadata["content_type"] == "application/octet-stream"
            assert serialization.loads(chunks[1].data) == {"json": True}
            assert "content_type" not in chunks[1].metadata

    run(go())


def test_exception_midway_sends_error_final_chunk(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "fails_midway")
            assert len(chunks) == 2
            assert payloads(chunks[:1]) == [{"i": 0}]
            last = chunks[-1]
            assert last.is_final and last.data == b""
            assert last.error.type == "RuntimeError"
            assert last.error.message == "stream broke"
            assert last.error.kind == "tool"
            assert "fails_midway" in last.error.traceback

    run(go())


@pytest.mark.parametrize("tool", ["exits_midway", "aexits_midway"])
@pytest.mark.parametrize(("how", "error_type"), [("exit", "SystemExit"), ("base", "BaseException")])
def test_system_exit_or_base_exception_midway_sends_error_final_chunk(sock_dir, tool, how, error_type):
    """A producer that dies by SystemExit or a bare BaseException still ends
    its stream with an error chunk (the caller is not left waiting), and the
    worker keeps serving."""

    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await asyncio.wait_for(collect(stub, tool, {"how": how}), WAIT_S)
            assert payloads(chunks[:1]) == [{"i": 0}]
            last = chunks[-1]
            assert last.is_final and last.error.type == error_type
            assert tool in last.error.traceback
            assert payloads(await collect(stub, "count", {"n": 1})) == [{"i": 0}, None]

    run(go())


def test_non_streaming_tool_via_stream_gives_single_final_chunk(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            chunks = await collect(stub, "add", {"a": 2, "b": 5})
            assert len(chunks) == 1
            assert chunks[0].is_final and serialization.loads(chunks[0].data) == 7
            chunks = await collect(stub, "blob", {"size": 2})
            assert chunks[0].is_final and chunks[0].data == b"\x00\x01"

    run(go())


def test_stream_errors_before_start(sock_dir):
    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            (chunk,) = await collect(stub, "nope")
            assert chunk.is_final and chunk.error.kind == "unknown_tool"
            (chunk,) = await collect(stub, "add", {"a": 1})
            assert chunk.is_final and chunk.error.kind == "invalid_arguments"
            assert "missing required argument 'b'" in chunk.error.message

    run(go())


@pytest.mark.parametrize("tool", ["endless", "aendless"])
def test_cancelling_the_rpc_stops_the_producer(sock_dir, tool):
    adapter = TestAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            call = stub.ExecuteStreamingTool(request(tool))
            received = 0
            async for _chunk in call:
                received += 1
                if received == 3:
                    break
            call.cancel()
            loop = asyncio.get_running_loop()
            closed = await loop.run_in_executor(None, adapter.gate.closed.wait, WAIT_S)
            assert closed, "producer was not closed after the client cancelled"
            # and the worker is still healthy
            chunks = await collect(stub, "count", {"n": 1})
            assert chunks[-1].is_final

    run(go())


def test_producer_is_bounded_by_the_buffer(sock_dir, monkeypatch):
    monkeypatch.setenv("SNAKEPIT_STREAM_BUFFER", "4")
    adapter = TestAdapter()
    # The event to wait for: the producer finds the buffer full and has to
    # wait for the consumer (a runaway producer never does). How far it got
    # by then is read at that moment.
    blocked = threading.Event()
    produced_when_blocked: list[int] = []
    put_threadsafe = Channel.put_threadsafe

    def watched_put(self, item):
        if self._slots.acquire(blocking=False):
            self._slots.release()
        elif not blocked.is_set():
            produced_when_blocked.append(adapter.gate.produced)
            blocked.set()
        put_threadsafe(self, item)

    monkeypatch.setattr(Channel, "put_threadsafe", watched_put)

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            call = stub.ExecuteStreamingTool(request("endless_big"))
            first = await call.read()
            assert first.chunk_id == "0"
            # Nobody reads now: the producer fills the buffer and waits.
            loop = asyncio.get_running_loop()
            waited = await loop.run_in_executor(None, blocked.wait, WAIT_S)
            call.cancel()
            assert waited, f"the producer never waited for the consumer ({adapter.gate.produced} items)"
            # 4 buffered here, plus what the HTTP/2 windows hold (a few
            # 256 KiB messages); without the bound it would be hundreds.
            (produced,) = produced_when_blocked
            assert produced < 64, f"producer ran ahead by {produced} items"
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, adapter.gate.closed.wait, WAIT_S)

    run(go())


# ------------------------------------------------------------------ Channel unit tests


class _WatchedSlots(threading.Semaphore):
    """The channel's slot semaphore, telling when a producer has to wait."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.waiting = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if super().acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.waiting.set()
        return super().acquire(True, timeout)


def _watched(channel: Channel) -> _WatchedSlots:
    assert isinstance(channel._slots, threading.Semaphore)
    channel._slots = _WatchedSlots(channel.maxsize)
    return channel._slots


def test_channel_blocks_thread_producer_when_full():
    async def go():
        loop = asyncio.get_running_loop()
        channel = Channel(loop, maxsize=2)
        slots = _watched(channel)
        progress = []

        def producer():
            for i in range(3):
                channel.put_threadsafe(i)
                progress.append(i)
            channel.finish("end")

        thread = threading.Thread(target=producer)
        thread.start()
        # Two items fit; the third put waits for a slot ...
        assert await loop.run_in_executor(None, slots.waiting.wait, WAIT_S), "producer never blocked"
        # ... with the count at the bound, until the consumer reads.
        assert progress == [0, 1]
        assert thread.is_alive()
        first = await channel.get()
        assert first == (ITEM, 0)
        rest = [await channel.get() for _ in range(3)]
        assert rest == [(ITEM, 1), (ITEM, 2), (DONE, "end")]
        thread.join(WAIT_S)
        assert progress == [0, 1, 2]

    run(go())


def test_channel_bound_holds_without_consumer():
    async def go():
        loop = asyncio.get_running_loop()
        channel = Channel(loop, maxsize=2)
        slots = _watched(channel)
        done = threading.Event()
        count = []

        def producer():
            try:
                for i in range(10):
                    channel.put_threadsafe(i)
                    count.append(i)
            except StreamCancelled:
                done.set()

        thread = threading.Thread(target=producer)
        thread.start()
        assert await loop.run_in_executor(None, slots.waiting.wait, WAIT_S), "producer never blocked"
        assert thread.is_alive(), "producer should be blocked on a full buffer"
        assert count == [0, 1]
        channel.cancel()
        thread.join(WAIT_S)
        assert done.is_set() and not thread.is_alive()

    run(go())


def test_channel_async_put_waits_for_space():
    async def go():
        channel = Channel(asyncio.get_running_loop(), maxsize=1)
        await channel.put("a")
        blocked = asyncio.ensure_future(channel.put("b"))
        await asyncio.sleep(0)
        assert not blocked.done()
        assert await channel.get() == (ITEM, "a")
        await asyncio.wait_for(blocked, WAIT_S)
        assert await channel.get() == (ITEM, "b")
        channel.cancel()
        with pytest.raises(StreamCancelled):
            await channel.put("c")

    run(go())
