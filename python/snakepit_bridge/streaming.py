"""Streaming plumbing between a producing tool and the gRPC response stream.

A streaming tool produces items by

* yielding them (sync generator, run in a worker thread; or async generator,
  run on the event loop), or
* calling ``stream.send(item)`` on the ``stream`` argument it asked for
  (``await stream.asend(item)`` from async code applies backpressure).

An item is any JSON-able value, raw ``bytes``, or an object with ``data``,
``is_final`` and optionally ``metadata`` attributes such as
:class:`StreamChunk`. An item with ``is_final`` true ends the stream. A value
returned by the tool (a generator's ``return x`` or a stream tool's return
value) becomes the final chunk; otherwise an empty final chunk closes the
stream.

Between producer and consumer sits a bounded buffer (``SNAKEPIT_STREAM_BUFFER``
items, default 16): a producer that runs ahead blocks until the client has
taken items. When the RPC is cancelled, the producer is cancelled: a thread
producer gets :class:`~snakepit_bridge.errors.StreamCancelled` from its next
``yield``/``send`` and its generator is closed; an async producer's task is
cancelled.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import StreamCancelled

__all__ = ["StreamChunk", "ToolStream", "Channel", "is_chunk_like", "DEFAULT_BUFFER"]

DEFAULT_BUFFER = 16


def _buffer_size() -> int:
    try:
        value = int(os.environ.get("SNAKEPIT_STREAM_BUFFER", DEFAULT_BUFFER))
    except ValueError:
        value = DEFAULT_BUFFER
    return max(1, value)


@dataclass
class StreamChunk:
    """One item of a stream with explicit control over finality and metadata."""

    data: Any = None
    is_final: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)


def is_chunk_like(item: Any) -> bool:
    return (
        not isinstance(item, (dict, list, str, bytes, bytearray, memoryview))
        and hasattr(item, "data")
        and hasattr(item, "is_final")
    )


# Message kinds travelling through a Channel.
ITEM = "item"
DONE = "done"
FAILED = "failed"


class Channel:
    """Bounded single-consumer queue fed from threads or from the event loop.

    ``get`` runs on the loop. Items count against the bound; DONE/FAILED
    messages do not (so a producer can always finish).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int | None = None):
        self.loop = loop
        self.maxsize = maxsize or _buffer_size()
        self._queue: asyncio.Queue[tuple[str, Any, bool]] = asyncio.Queue()
        self._slots = threading.Semaphore(self.maxsize)
        self._space = asyncio.Event()
        self._cancelled = threading.Event()
        self._closed = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # ------------------------------------------------------------ producers

    def put_threadsafe(self, item: Any) -> None:
        """Put an item from a worker thread; blocks while the buffer is full."""
        if self._cancelled.is_set():
            raise StreamCancelled("stream was cancelled by the client")
        self._slots.acquire()
        if self._cancelled.is_set():
            self._slots.release()
            raise StreamCancelled("stream was cancelled by the client")
        self._post((ITEM, item, True))

    async def put(self, item: Any) -> None:
        """Put an item from the event loop; waits while the buffer is full."""
        while True:
            if self._cancelled.is_set():
                raise StreamCancelled("stream was cancelled by the client")
            if self._slots.acquire(blocking=False):
                break
            self._space.clear()
            await self._space.wait()
        self._queue.put_nowait((ITEM, item, True))

    def put_nowait(self, item: Any) -> None:
        """Put an item from the event loop without waiting (may exceed the bound)."""
        if self._cancelled.is_set():
            raise StreamCancelled("stream was cancelled by the client")
        took = self._slots.acquire(blocking=False)  # take a slot when there is one
        self._queue.put_nowait((ITEM, item, took))

    def finish(self, result: Any = None) -> None:
        self._control((DONE, result, False))

    def fail(self, exc: BaseException) -> None:
        self._control((FAILED, exc, False))

    def _control(self, message: tuple[str, Any, bool]) -> None:
        if self._on_loop():
            self._queue.put_nowait(message)
        else:
            self._post(message)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _post(self, message: tuple[str, Any, bool]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, message)
        except RuntimeError as exc:  # loop closed: the worker is going away
            raise StreamCancelled("worker event loop is closed") from exc

    # ------------------------------------------------------------ consumer

    async def get(self) -> tuple[str, Any]:
        kind, payload, took_slot = await self._queue.get()
        if took_slot:
            self._slots.release()
            self._space.set()
        return kind, payload

    def cancel(self) -> None:
        """Wake and stop the producer; later puts raise StreamCancelled."""
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        # Wake a thread blocked in put_threadsafe and any loop-side waiter.
        self._slots.release()
        if self._on_loop():
            self._space.set()
        else:
            try:
                self.loop.call_soon_threadsafe(self._space.set)
            except RuntimeError:
                pass


class ToolStream:
    """The object a tool receives in its ``stream`` parameter."""

    def __init__(self, channel: Channel):
        self._channel = channel

    @property
    def cancelled(self) -> bool:
        """True once the client went away; further sends raise StreamCancelled."""
        return self._channel.cancelled

    def send(self, item: Any) -> None:
        """Send one item to the client.

        From a sync tool (a worker thread) this blocks while the buffer is
        full. From async code on the event loop it never blocks; use
        ``await stream.asend(item)`` there to wait for buffer space.
        """
        if self._channel._on_loop():
            self._channel.put_nowait(item)
        else:
            self._channel.put_threadsafe(item)

    async def asend(self, item: Any) -> None:
        """Send one item from async code, waiting while the buffer is full."""
        await self._channel.put(item)

    # Aliases some adapters use.
    def write(self, item: Any) -> None:
        self.send(item)

    def __call__(self, item: Any) -> None:
        self.send(item)
