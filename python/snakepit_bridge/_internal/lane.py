"""The worker's end of the call lane.

Beside its gRPC server (sessions, heartbeats, cancellation: the control
plane), a worker listens on a Unix stream socket for the VM's
``ExecuteTool`` calls and streams. The framing is the native core's
``snakepit_core::lane`` (see its module documentation): each message is a
4-byte big-endian length, then a 12-byte header (kind, flags, arg, call id)
and one of the protobuf messages the gRPC service carries, so ``proto/``
stays the one contract. (The length prefix is the one the VM's socket
driver reads natively, which is what lets a reply wake a BEAM scheduler
directly.)

* The VM connects once and sends ``HELLO`` with its secret first; a
  connection without it is dropped (and counted as a refusal). Once the
  VM is in, the socket's path is removed: nobody else can connect.
* One thread blocks on the socket (the GIL is released while it waits).
  Under the process profile it runs sync tools itself, one at a time as
  the profile promises; the thread profile hands them to its executor;
  async tools go to the event loop.
* A stream's chunks leave in ``CHUNKS`` messages within the credit the VM
  grants: a chunk goes out at once when none of the stream is in flight,
  and otherwise waits for the next grant or until the credit is used up,
  so a fast producer sends many chunks per message and a slow one is never
  held back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import select
import socket
import struct
import threading
from typing import Any

from ..errors import StreamCancelled
from ..generated import snakepit_bridge_pb2 as pb
from ..streaming import is_chunk_like
from . import auth, elixir_bridge, tool_streams
from .responses import error_chunk, item_chunk, tool_error
from .runtime import ToolRunner

log = logging.getLogger("snakepit_bridge.lane")

__all__ = ["LaneServer", "FrameReader", "HEADER", "PREFIX"]

HEADER = struct.Struct("<BBHQ")
PREFIX = struct.Struct(">I")
_LEN = struct.Struct("<I")

HELLO, CALL, REPLY, STREAM, CHUNKS, CREDIT, CANCEL = 1, 2, 3, 4, 5, 6, 7
END = 2

# How much one receive asks for; a larger message is read straight into a
# buffer of its own size.
RECV_BYTES = 256 * 1024
# Messages up to this size leave in one write with their prefix joined on.
_JOIN_BYTES = 64 * 1024

# A batch of chunks is sent once it holds this much, credit or not.
BATCH_BYTES = 64 * 1024

# How long a new connection may take to say HELLO before it is dropped.
HELLO_TIMEOUT_S = 2.0


def max_message_bytes() -> int:
    """The largest lane message accepted: the VM's max_message_bytes plus
    the header."""
    return elixir_bridge.MAX_MESSAGE_BYTES + HEADER.size


def frame(kind: int, call_id: int, payload: bytes = b"", flags: int = 0, arg: int = 0) -> list[bytes]:
    """One message as the parts to write: prefix and header, then payload."""
    head = PREFIX.pack(HEADER.size + len(payload)) + HEADER.pack(kind, flags, arg, call_id)
    if len(payload) <= _JOIN_BYTES:
        return [head + payload]
    return [head, payload]


def send_all(sock: socket.socket, parts: list[bytes]) -> None:
    """Writes every byte of ``parts`` (a stream socket may take less)."""
    if len(parts) == 1:
        sock.sendall(parts[0])
        return
    total = sum(len(p) for p in parts)
    sent = sock.sendmsg(parts)
    if sent < total:
        sock.sendall(memoryview(b"".join(parts))[sent:])


class FrameReader:
    """Cuts a stream socket's bytes into lane messages (header + payload,
    without the length prefix).

    Receives go into one buffer kept for the connection's life: a fresh
    ``recv(n)`` buffer of this size is an mmap, mremap and munmap per call.
    """

    def __init__(self, sock: socket.socket, limit: int):
        self.sock = sock
        self.limit = limit
        self._buf = bytearray(RECV_BYTES)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # Waiting in poll() for input, not in recv(): a thread asleep in a
        # stream socket's recv() is also woken each time the VM reads a
        # reply (the kernel signals freed room to every sleeper on the
        # socket), a wasted wake-up on both sides per call; poll() waiters
        # are woken only for what they asked.
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def _fill(self) -> bool:
        """Receives more bytes after those buffered; False at end of input."""
        # All read, or no room left: start again at the buffer's start.
        if self._start == self._end or self._end == len(self._buf):
            self._compact()
        if self.sock.gettimeout() is None:
            self._poll.poll()
        got = self.sock.recv_into(self._view[self._end :])
        if got == 0:
            return False
        self._end += got
        return True

    def next(self) -> bytes | None:
        """The next message, or None when the peer closed the socket."""
        while self._end - self._start < PREFIX.size:
            if not self._fill():
                return None
        (n,) = PREFIX.unpack_from(self._buf, self._start)
        if n < HEADER.size or n > self.limit:
            raise OSError(f"a lane message of {n} bytes (limit {self.limit})")
        total = PREFIX.size + n
        if total > len(self._buf):
            return self._large(n)
        while self._end - self._start < total:
            if self._start + total > len(self._buf):
                self._compact()
            if not self._fill():
                return None
        first = self._start + PREFIX.size
        self._start += total
        return bytes(self._view[first : self._start])

    def _compact(self) -> None:
        """Moves the unread bytes to the buffer's start."""
        kept = self._end - self._start
        self._buf[:kept] = self._buf[self._start : self._end]
        self._start, self._end = 0, kept

    def _large(self, n: int) -> bytes | None:
        """A message larger than the buffer, read straight into its own."""
        out = bytearray(n)
        have = self._end - self._start - PREFIX.size
        out[:have] = self._view[self._start + PREFIX.size : self._end]
        self._start = self._end = 0
        view = memoryview(out)
        while have < n:
            got = self.sock.recv_into(view[have:])
            if got == 0:
                return None
            have += got
        return bytes(out)


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
        self._limit = max_message_bytes()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
        accepted = self._accept()
        if accepted is None:
            return
        conn, reader = accepted
        self._conn = conn
        try:
            self._read(reader)
        except OSError as exc:
            if not self._closed:
                log.debug("lane closed: %s", exc)
        finally:
            for channel in list(self.streams.values()):
                channel.stop()
            self.streams.clear()
            conn.close()

    def _accept(self) -> tuple[socket.socket, FrameReader] | None:
        """The VM's connection: the first that says HELLO with the secret."""
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return None
            conn.settimeout(HELLO_TIMEOUT_S)
            reader = FrameReader(conn, self._limit)
            try:
                first = reader.next() or b""
            except OSError:
                first = b""
            if len(first) >= HEADER.size and first[0] == HELLO and auth.valid(first[HEADER.size :]):
                conn.settimeout(None)
                self._listener.close()
                self._unlink()
                return conn, reader
            auth.count_refusal("lane", "missing" if len(first) <= HEADER.size else "wrong")
            conn.close()
        return None

    def _read(self, reader: FrameReader) -> None:
        next_message = reader.next
        while True:
            message = next_message()
            if message is None:
                return
            kind, _flags, arg, call_id = HEADER.unpack_from(message)
            if kind == CALL:
                self._call(call_id, message[HEADER.size :])
            elif kind == CREDIT:
                channel = self.streams.get(call_id)
                if channel is not None:
                    channel.grant(_LEN.unpack_from(message, HEADER.size)[0])
            elif kind == STREAM:
                self._stream(call_id, message[HEADER.size :], arg)
            elif kind == CANCEL:
                channel = self.streams.pop(call_id, None)
                if channel is not None:
                    channel.stop()

    # ------------------------------------------------------------ sending

    def send(self, kind: int, call_id: int, payload: bytes, flags: int = 0) -> None:
        """One message; messages never interleave."""
        conn = self._conn
        if conn is None:
            raise OSError("the lane is not connected")
        parts = frame(kind, call_id, payload, flags)
        with self._send_lock:
            send_all(conn, parts)

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
            started = tool_streams.begin_stream(self.runner, request, channel)
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
                self._pending.append(_chunk_bytes(error_chunk(self._index, exc)))
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
        try:
            chunk = item_chunk(self._index, item, final=final)
        except Exception as exc:  # noqa: BLE001
            chunk = error_chunk(self._index, exc, "serialization")
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

