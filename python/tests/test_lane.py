"""The call lane, spoken to by a small client that frames messages as the
native core does (snakepit_core::lane: a big-endian length, a header, the
payload, on a stream socket): hello and its refusal, unary calls (sync,
async, unknown tools, large messages), a length past the limit, and
streams with credit, batching, end and cancel."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from helpers import WAIT_S, request, result_of, running_worker
from sample_adapters import TestAdapter, Threaded

from snakepit_bridge import serialization
from snakepit_bridge._internal import auth
from snakepit_bridge._internal.lane import (
    CALL,
    CANCEL,
    CHUNKS,
    CREDIT,
    END,
    HEADER,
    HELLO,
    REPLY,
    STREAM,
)
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb

SECRET = "lane-test-secret"
_LEN = struct.Struct("<I")
_PREFIX = struct.Struct(">I")


@pytest.fixture(autouse=True)
def with_secret():
    auth.set_secret(SECRET)
    yield
    auth.set_secret(None)


class LaneClient:
    """The VM's end, blocking, in a thread of its own (via to_thread)."""

    def __init__(self, path: str, secret: str = SECRET):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(path)
        self.send(HELLO, 0, secret.encode())

    def send(self, kind: int, call_id: int, payload: bytes = b"", arg: int = 0) -> None:
        head = _PREFIX.pack(HEADER.size + len(payload)) + HEADER.pack(kind, 0, arg, call_id)
        self.sock.sendall(head + payload)

    def _exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise EOFError("the worker closed the lane")
            out += got
        return bytes(out)

    def receive(self) -> tuple[int, int, int, bytes]:
        """One whole message: (kind, flags, call_id, payload)."""
        (n,) = _PREFIX.unpack(self._exactly(_PREFIX.size))
        message = self._exactly(n)
        kind, flags, _arg, call_id = HEADER.unpack_from(message)
        return kind, flags, call_id, message[HEADER.size :]

    def call(self, call_id: int, req: Any) -> Any:
        self.send(CALL, call_id, req.SerializeToString())
        kind, _flags, got_id, payload = self.receive()
        assert (kind, got_id) == (REPLY, call_id)
        return pb.ExecuteToolResponse.FromString(payload)

    def close(self) -> None:
        self.sock.close()


def chunks_of(payload: bytes) -> list[Any]:
    out, rest = [], payload
    while rest:
        (n,) = _LEN.unpack_from(rest)
        out.append(pb.ToolChunk.FromString(rest[4 : 4 + n]))
        rest = rest[4 + n :]
    return out


def lane_worker(adapter: Any, sock_dir: Any, **kwargs: Any) -> Any:
    return running_worker(adapter, sock_dir, lane_path=str(sock_dir / "w.lane"), **kwargs)


async def connect(worker: Any) -> LaneClient:
    return await asyncio.to_thread(LaneClient, worker.lane.path)


def test_calls_answer_on_the_lane(sock_dir):
    async def main():
        async with lane_worker(TestAdapter(), sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                added = await asyncio.to_thread(client.call, 1, request("add", {"a": 2, "b": 40}))
                assert result_of(added) == 42
                async_added = await asyncio.to_thread(client.call, 2, request("async_add", {"a": 1, "b": 2}))
                assert result_of(async_added) == 3
                unknown = await asyncio.to_thread(client.call, 3, request("nope"))
                assert not unknown.success and unknown.error.kind == "unknown_tool"
                failed = await asyncio.to_thread(client.call, 4, request("fail", {"message": "bad"}))
                assert failed.error.type == "ValueError" and failed.error.message == "bad"
                streaming = await asyncio.to_thread(client.call, 5, request("count"))
                assert streaming.error.kind == "streaming_tool"
            finally:
                client.close()

    asyncio.run(main())


def test_large_messages_travel_whole(sock_dir):
    async def main():
        async with lane_worker(TestAdapter(), sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                big = bytes(range(256)) * 2000  # 512 KB: more than one receive
                req = request("binary_len", {"label": "x"}, binary={"data": big})
                answer = await asyncio.to_thread(client.call, 7, req)
                assert result_of(answer) == {"len": len(big), "type": "bytes", "label": "x"}
                blob = await asyncio.to_thread(client.call, 8, request("blob", {"size": 256}))
                assert result_of(blob) == bytes(range(256))
            finally:
                client.close()

    asyncio.run(main())


def test_a_length_past_the_limit_closes_the_lane(sock_dir):
    async def main():
        async with lane_worker(TestAdapter(), sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                assert result_of(await asyncio.to_thread(client.call, 1, request("add", {"a": 1, "b": 1}))) == 2
                client.sock.sendall(_PREFIX.pack(0xFFFF_FFF0) + HEADER.pack(CALL, 0, 0, 2))
                with pytest.raises((EOFError, ConnectionResetError)):
                    await asyncio.to_thread(client.receive)
            finally:
                client.close()

    asyncio.run(main())


def test_a_connection_without_the_secret_is_dropped_and_the_vm_still_gets_in(sock_dir):
    async def main():
        async with lane_worker(TestAdapter(), sock_dir) as (worker, _stub):
            refused = auth.refused_count()
            intruder = await asyncio.to_thread(LaneClient, worker.lane.path, "wrong")
            with pytest.raises((EOFError, ConnectionError)):
                await asyncio.to_thread(intruder.call, 1, request("add", {"a": 1, "b": 1}))
            intruder.close()
            assert auth.refused_count() == refused + 1
            client = await connect(worker)
            try:
                assert result_of(await asyncio.to_thread(client.call, 1, request("add", {"a": 1, "b": 1}))) == 2
            finally:
                client.close()
            # Once the VM is in, nobody else can connect.
            with pytest.raises(OSError):
                LaneClient(str(sock_dir / "w.lane"))

    asyncio.run(main())


def test_thread_profile_runs_lane_calls_concurrently(sock_dir):
    async def main():
        adapter = Threaded()
        async with lane_worker(adapter, sock_dir, threaded=True, max_workers=4) as (worker, _stub):
            client = await connect(worker)
            try:

                def two_at_a_rendezvous() -> list[Any]:
                    # Both calls meet at a two-party barrier: they finish only
                    # if they run at the same time.
                    client.send(CALL, 1, request("rendezvous").SerializeToString())
                    client.send(CALL, 2, request("rendezvous").SerializeToString())
                    return [client.receive(), client.receive()]

                replies = await asyncio.to_thread(two_at_a_rendezvous)
                assert sorted(call_id for _k, _f, call_id, _p in replies) == [1, 2]
                for _kind, _flags, _id, payload in replies:
                    assert pb.ExecuteToolResponse.FromString(payload).success
            finally:
                client.close()

    asyncio.run(main())


def consume(client: LaneClient, call_id: int, *, grant_each: bool = True) -> tuple[list[Any], list[int]]:
    """Read a stream to its end, granting credit for each frame's chunks
    as it is handled; returns the chunks and the batch sizes."""
    chunks, batches = [], []
    while True:
        kind, flags, got_id, payload = client.receive()
        assert (kind, got_id) == (CHUNKS, call_id)
        batch = chunks_of(payload)
        chunks.extend(batch)
        batches.append(len(batch))
        if flags & END:
            return chunks, batches
        if grant_each:
            client.send(CREDIT, call_id, _LEN.pack(len(batch)))


def test_a_stream_arrives_in_order_within_its_window_and_ends(sock_dir):
    async def main():
        async with lane_worker(TestAdapter(), sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                client.send(STREAM, 11, request("count", {"n": 200}).SerializeToString(), arg=8)
                chunks, batches = await asyncio.to_thread(consume, client, 11)
                data = [serialization.loads(c.data) for c in chunks if c.data]
                assert data == [{"i": i} for i in range(200)]
                assert chunks[-1].is_final and sum(batches) == len(chunks)
                assert max(batches) <= 8 + 1, batches  # the window (the final chunk rides free)
            finally:
                client.close()

    asyncio.run(main())


def test_a_stream_without_credit_stops_at_the_window_and_batches_what_waits(sock_dir):
    async def main():
        adapter = TestAdapter()
        async with lane_worker(adapter, sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                client.send(STREAM, 12, request("endless").SerializeToString(), arg=5)

                def until_window() -> list[int]:
                    batches: list[int] = []
                    while sum(batches) < 5:
                        _kind, _flags, _id, payload = client.receive()
                        batches.append(len(chunks_of(payload)))
                    return batches

                # The first chunk leaves alone (nothing was in flight); the
                # next ones wait for a grant, and leave together when the
                # credit is used up.
                assert await asyncio.to_thread(until_window) == [1, 4]
                # Nothing more comes without credit: the producer is blocked
                # putting the 6th item.
                client.sock.settimeout(0.3)
                with pytest.raises(socket.timeout):
                    client.receive()
                client.sock.settimeout(WAIT_S)
                assert adapter.gate.produced == 5
                client.send(CREDIT, 12, _LEN.pack(2))
                kind, _flags, _id, payload = await asyncio.to_thread(client.receive)
                assert kind == CHUNKS and serialization.loads(chunks_of(payload)[0].data) == {"i": 5}
                client.send(CANCEL, 12)
                assert await asyncio.to_thread(adapter.gate.closed.wait, WAIT_S)
            finally:
                client.close()

    asyncio.run(main())


def test_a_cancelled_async_stream_is_stopped(sock_dir):
    async def main():
        adapter = TestAdapter()
        async with lane_worker(adapter, sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                client.send(STREAM, 13, request("aendless").SerializeToString(), arg=4)
                kind, _flags, call_id, _payload = await asyncio.to_thread(client.receive)
                assert (kind, call_id) == (CHUNKS, 13)
                client.send(CANCEL, 13)
                assert await asyncio.to_thread(adapter.gate.closed.wait, WAIT_S)
            finally:
                client.close()

    asyncio.run(main())


def test_stream_errors_end_the_stream(sock_dir):
    async def main():
        async with lane_worker(TestAdapter(), sock_dir) as (worker, _stub):
            client = await connect(worker)
            try:
                client.send(STREAM, 14, request("fails_midway").SerializeToString(), arg=8)
                chunks, _ = await asyncio.to_thread(consume, client, 14)
                assert chunks[-1].error.type == "RuntimeError"
                assert "stream broke" in chunks[-1].error.message
                client.send(STREAM, 15, request("nope").SerializeToString(), arg=8)
                chunks, _ = await asyncio.to_thread(consume, client, 15)
                assert [c.error.kind for c in chunks] == ["unknown_tool"]
            finally:
                client.close()

    asyncio.run(main())
