"""The worker's end of the call lane.

Beside its gRPC server (sessions, heartbeats, cancellation: the control
plane), a worker listens on a ``SOCK_SEQPACKET`` Unix socket for the VM's
``ExecuteTool`` calls and streams. The framing is the native core's
``snakepit_core::lane`` (see its module documentation): a 12-byte header
(kind, flags, arg, call id) before the same protobuf messages the gRPC
service carries, so ``proto/`` stays the one contract.

* The VM connects once and sends ``HELLO`` with its secret first; a
  connection without it is dropped (and counted as a refusal). Once the
  VM is in, the socket's path is removed: nobody else can connect.
* One thread blocks on the socket (the GIL is released while it waits).
  Under the process profile it runs sync tools itself, one at a time as
  the profile promises; the thread profile hands them to its executor;
  async tools go to the event loop.
* A stream's chunks leave in ``CHUNKS`` frames within the credit the VM
  grants: a chunk goes out at once when none of the stream is in flight,
  and otherwise waits for the next grant or until the credit is used up,
  so a fast producer sends many chunks per frame and a slow one is never
  held back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import struct
import threading
from typing import Any

from ..errors import StreamCancelled
from ..generated import snakepit_bridge_pb2 as pb
from ..streaming import is_chunk_like
from . import auth
from .runtime import ToolRunner, tool_error

log = logging.getLogger("snakepit_bridge.lane")

__all__ = ["LaneServer", "HEADER", "MAX_FRAME"]

HEADER = struct.Struct("<BBHQ")
MAX_FRAME = 128 * 1024
_ROOM = MAX_FRAME - HEADER.size
_LEN = struct.Struct("<I")

HELLO, CALL, REPLY, STREAM, CHUNKS, CREDIT, CANCEL = 1, 2, 3, 4, 5, 6, 7
MORE, END = 1, 2

# A batch of chunks is sent once it holds this much, credit or not.
BATCH_BYTES = 64 * 1024

# How long a new connection may take to say HELLO before it is dropped.
HELLO_TIMEOUT_S = 2.0


class LaneServer:
    """Serves the lane at ``path`` for ``runner`` until the VM hangs up."""

    def __init__(
        self,
        path: str,
        runner: ToolRunner,
        loop: asyncio.AbstractEventLoop,
        *,
        inline: bool,
        executor: concurrent.futures.Executor,
    ):
        self.path = path
        self.runner = runner
        self.loop = loop
        self.inline = inline
        self.executor = executor
        self.streams: dict[int, LaneChannel] = {}
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._listener.bind(path)
            os.chmod(path, 0o600)
            self._listener.listen(4)
        except OSError:
            self._listener.close()
            raise
        self._thread = threading.Thread(target=self._serve, name="snakepit-lane", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop serving (idempotent): the thread ends at its next receive."""
        self._closed = True
        for sock in (self._listener, self._conn):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._unlink()

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    # ------------------------------------------------------------ connection

    def _serve(self) -> None:
        conn = self._accept()
        if conn is None:
            return
        self._conn = conn
        try:
            self._read(conn)
        except OSError as exc:
            if not self._closed:
                log.debug("lane closed: %s", exc)
        finally:
            for channel in list(self.streams.values()):
                channel.stop()
            self.streams.clear()
            conn.close()

    def _accept(self) -> socket.socket | None:
        """The VM's connection: the first that says HELLO with the secret."""
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return None
            conn.settimeout(HELLO_TIMEOUT_S)
            try:
                first = conn.recv(MAX_FRAME)
            except OSError:
                first = b""
            if len(first) >= HEADER.size and first[0] == HELLO and auth.valid(first[HEADER.size :]):
                conn.settimeout(None)
                self._listener.close()
                self._unlink()
                return conn
            auth.count_refusal("lane", "missing" if len(first) <= HEADER.size else "wrong")
            conn.close()
        return None

    def _read(self, conn: socket.socket) -> None:
        recv = conn.recv
        partial: dict[tuple[int, int], list[bytes]] = {}
        while True:
            frame = recv(MAX_FRAME)
            if not frame:
                return
            kind, flags, arg, call_id = HEADER.unpack_from(frame)
            payload = frame[HEADER.size :]
            key = (call_id, kind)
            if flags & MORE or key in partial:
                parts = partial.setdefault(key, [])
                parts.append(payload)
                if flags & MORE:
                    continue
                payload = b"".join(partial.pop(key))
            if kind == CALL:
                self._call(call_id, payload)
            elif kind == CREDIT:
                channel = self.streams.get(call_id)
                if channel is not None:
                    channel.grant(_LEN.unpack_from(payload)[0])
            elif kind == STREAM:
                self._stream(call_id, payload, arg)
            elif kind == CANCEL:
                channel = self.streams.pop(call_id, None)
                if channel is not None:
                    channel.stop()

    # ------------------------------------------------------------ sending

    def send(self, kind: int, call_id: int, payload: bytes, flags: int = 0) -> None:
        """One message, cut into frames when it is large; frames of one
        message never interleave with another's."""
        conn = self._conn
        if conn is None:
            raise OSError("the lane is not connected")
        with self._send_lock:
            if len(payload) <= _ROOM:
                conn.sendmsg([HEADER.pack(kind, flags, 0, call_id), payload])
                return
            view = memoryview(payload)
            last = (len(payload) - 1) // _ROOM
            for i in range(last + 1):
                part_flags = flags if i == last else (flags | MORE) & ~END
                conn.sendmsg([HEADER.pack(kind, part_flags, 0, call_id), view[i * _ROOM : (i + 1) * _ROOM]])

    def _reply(self, call_id: int, response: Any) -> None:
        try:
            self.send(REPLY, call_id, response.SerializeToString())
        except OSError as exc:
            log.debug("reply of lane call %d not sent: %s", call_id, exc)

    # ------------------------------------------------------------ calls

    def _call(self, call_id: int, payload: bytes) -> None:
        try:
            request = pb.ExecuteToolRequest.FromString(payload)
        except Exception as exc:  # noqa: BLE001 - a malformed call gets an answer
            self._reply(call_id, _failure(exc, "serialization"))
            return
        if not self.runner.runs_inline(request.tool_name):
            future = asyncio.run_coroutine_threadsafe(self.runner.execute(request), self.loop)
            future.add_done_callback(lambda f: self._reply(call_id, _result_of(f)))
        elif self.inline:
            self._run(call_id, request)
        else:
            self.executor.submit(self._run, call_id, request)

    def _run(self, call_id: int, request: Any) -> None:
        try:
            response = self.runner.execute_sync(request, self.loop)
        except BaseException as exc:  # noqa: BLE001 - the caller always gets an answer
            response = _failure(exc)
            if not isinstance(exc, Exception):
                self._reply(call_id, response)
                raise
        self._reply(call_id, response)

    # ------------------------------------------------------------ streams

    def _stream(self, call_id: int, payload: bytes, window: int) -> None:
        channel = LaneChannel(self, call_id, max(window, 1))
        try:
            request = pb.ExecuteToolRequest.FromString(payload)
        except Exception as exc:  # noqa: BLE001
            channel.fail(exc)
            return
        self.streams[call_id] = channel

        def begin() -> None:
            started = self.runner.begin_stream(request, channel)
            if started is not None:
                channel.active, channel.producer = started
            if channel.stopped:
                channel.halt_producer()

        self.loop.call_soon_threadsafe(begin)


def _failure(exc: BaseException, kind: str | None = None) -> Any:
    return pb.ExecuteToolResponse(success=False, error=tool_error(exc, kind))


def _result_of(future: concurrent.futures.Future[Any]) -> Any:
    try:
        return future.result()
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        return _failure(exc)


class LaneChannel:
    """A stream's chunks on the lane, with the interface producers use on
    :class:`snakepit_bridge.streaming.Channel` (``put_threadsafe``, ``put``,
    ``put_nowait``, ``finish``, ``fail``, ``cancel``, ``cancelled``).

    Items become ``ToolChunk`` messages as they are put. Each takes one
    credit; a producer waits while it has none. Chunks are batched while
    some of the stream is in flight and sent when the VM grants credit,
    when the credit is used up, or at the stream's end.
    """

    def __init__(self, lane: LaneServer, call_id: int, window: int):
        self.lane = lane
        self.call_id = call_id
        self.loop = lane.loop
        self.active: Any = None
        self.producer: Any = None
        self._cond = threading.Condition()
        self._credit = window
        self._in_flight = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._index = 0
        self._ended = False
        self._stopped = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def cancelled(self) -> bool:
        return self._stopped

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # ------------------------------------------------------------ producers

    def _check(self) -> None:
        if self._stopped or self._ended:
            raise StreamCancelled("stream was cancelled by the client")

    def put_threadsafe(self, item: Any) -> None:
        """Put an item from a thread; blocks while the stream has no credit."""
        with self._cond:
            while self._credit <= 0 and not (self._stopped or self._ended):
                self._cond.wait()
            self._check()
            self._add(item)

    async def put(self, item: Any) -> None:
        """Put an item from the event loop; waits while it has no credit."""
        while True:
            with self._cond:
                self._check()
                if self._credit > 0:
                    self._add(item)
                    return
                waiter = self.loop.create_future()
                self._waiters.append(waiter)
            await waiter

    def put_nowait(self, item: Any) -> None:
        """Put an item without waiting; past the credit it is held until
        the VM grants more."""
        with self._cond:
            self._check()
            self._add(item)

    def finish(self, result: Any = None) -> None:
        """The producer is done; ``result`` is the final chunk's data."""
        with self._cond:
            if not (self._ended or self._stopped):
                self._add(result, final=True)

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if not (self._ended or self._stopped):
                self._pending.append(_chunk_bytes(self.lane.runner._error_chunk(self._index, exc)))
                self._end()

    def cancel(self) -> None:
        self.stop()

    # ------------------------------------------------------------ the lane's side

    def grant(self, n: int) -> None:
        """The VM granted ``n`` more chunks."""
        with self._cond:
            self._credit += n
            self._in_flight = max(self._in_flight - n, 0)
            if self._pending and not self._ended:
                self._flush()
            self._cond.notify_all()
            self._wake_waiters()

    def stop(self) -> None:
        """The consumer went away: the producer gets StreamCancelled at its
        next item, and a CancelTool that follows waits for that instead of
        raising into the producer's clean-up."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            ended = self._ended
            self._pending.clear()
            self._pending_bytes = 0
            self._cond.notify_all()
            self._wake_waiters()
        if not ended:
            self.halt_producer()

    def halt_producer(self) -> None:
        if self.active is not None:
            self.active.stopping()
        producer = self.producer
        if isinstance(producer, asyncio.Task):
            self.loop.call_soon_threadsafe(producer.cancel)

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self.loop.call_soon_threadsafe(_resolve, waiter)

    # ------------------------------------------------------------ chunks

    def _add(self, item: Any, *, final: bool = False) -> None:
        runner = self.lane.runner
        try:
            chunk = runner._item_chunk(self._index, item, final=final)
        except Exception as exc:  # noqa: BLE001
            chunk = runner._error_chunk(self._index, exc, "serialization")
        self._index += 1
        self._credit -= 1
        data = _chunk_bytes(chunk)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if chunk.is_final or (is_chunk_like(item) and getattr(item, "is_final", False)):
            self._end()
        elif self._in_flight == 0 or self._credit <= 0 or self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def _end(self) -> None:
        self._ended = True
        self._flush(END)
        self.lane.streams.pop(self.call_id, None)
        self._cond.notify_all()
        self._wake_waiters()

    def _flush(self, flags: int = 0) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        self._in_flight += len(pending)
        try:
            self.lane.send(CHUNKS, self.call_id, b"".join(pending), flags)
        except OSError:
            self._stopped = True


def _chunk_bytes(chunk: Any) -> bytes:
    data = chunk.SerializeToString()
    return _LEN.pack(len(data)) + data


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

