"""Stopping tool calls whose caller gave up.

When a call's deadline passes or its Elixir caller dies, the pool asks the
worker to cancel it (``CancelTool``, by the call's ``request_id``):

* an async tool's task is cancelled (``asyncio.CancelledError`` inside it);
* a sync tool gets :class:`~snakepit_bridge.errors.CallCancelled` raised in
  its thread (a cooperative stop: it takes effect the next time the thread
  runs Python code, not inside a long C call or ``time.sleep``).

``CancelTool`` answers when the call has ended, or after the wait it was
given, with one of: ``cancelled`` (async task cancelled), ``interrupted``
(sync tool stopped by the exception, or a sync stream producer stopped by
``StreamCancelled`` because its consumer went away), ``finished`` (it ended by itself),
``running`` (still running: the pool kills the worker after its grace) or
``unknown`` (no such call; it ended long ago or never arrived, and it will
not run: a late request with that id is refused).
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections import OrderedDict
from typing import Any

from ..errors import CallCancelled

__all__ = ["ActiveCall", "CallRegistry", "CANCELLED", "INTERRUPTED", "FINISHED", "RUNNING", "UNKNOWN", "STOPPED_EARLY"]

CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
FINISHED = "finished"
RUNNING = "running"
UNKNOWN = "unknown"

# What a call's body returns when it stopped because it was asked to, without
# CallCancelled: a sync stream producer that got StreamCancelled at its next
# item once the consumer went away. Such a call ended INTERRUPTED, not FINISHED.
STOPPED_EARLY = object()

# Outcomes of ended calls (and ids cancelled before they arrived) kept so a
# late CancelTool, or a late ExecuteTool, learns what happened.
_REMEMBERED = 4096

# Two prototypes of one C function: raise an exception in a thread, or clear
# the one pending there (a NULL exception).
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)


class ActiveCall:
    """One running call: where it runs and how it ended."""

    def __init__(self, registry: CallRegistry, request_id: str, tool: str, loop: asyncio.AbstractEventLoop | None):
        self.registry = registry
        self.request_id = request_id
        self.tool = tool
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None
        self.thread_id: int | None = None
        self.cancel_requested = False
        self.outcome: str | None = None
        self._lock = threading.Lock()
        self._running_in_thread = False
        self._exc_pending = False
        # A flag, not a threading.Event: the waiters are futures (wait), and
        # an Event costs a Condition per call.
        self._ended = False
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def done(self) -> bool:
        return self._ended

    # ------------------------------------------------------------ running

    def run_in_thread(self, fn: Any) -> Any:
        """Run ``fn`` in the calling (pool) thread as this call's body.

        CallCancelled raised by a cancel never escapes into code that is not
        this call's: the thread leaves the call only after any exception it
        was sent is delivered or cleared.
        """
        with self._lock:
            if self.cancel_requested:
                self.registry.end(self, INTERRUPTED)
                raise CallCancelled(f"call {self.request_id} was cancelled before it started")
            self.thread_id = threading.get_ident()
            self._running_in_thread = True
        outcome = FINISHED
        try:
            try:
                result = fn()
                if result is STOPPED_EARLY:
                    outcome = INTERRUPTED
                return result
            finally:
                with self._lock:
                    self._running_in_thread = False
                    pending, self._exc_pending = self._exc_pending, False
                if pending:
                    _clear_async_exc(self.thread_id, None)
        except CallCancelled:
            outcome = INTERRUPTED
            raise
        finally:
            self.registry.end(self, outcome)

    # ------------------------------------------------------------ cancelling

    def stopping(self) -> None:
        """The call is already being stopped another way (a stream whose
        consumer went away gets StreamCancelled at its next item): a later
        cancel waits for it instead of raising into its clean-up."""
        with self._lock:
            self.cancel_requested = True

    def cancel(self) -> None:
        """Ask the call to stop (idempotent; any thread)."""
        with self._lock:
            first = not self.cancel_requested
            self.cancel_requested = True
            if first and self._running_in_thread and self.thread_id is not None:
                self._exc_pending = True
                _set_async_exc(self.thread_id, CallCancelled)
        task = self.task
        if first and task is not None and not task.done():
            if self.loop is not None and self.loop.is_running():
                self.loop.call_soon_threadsafe(task.cancel)
            else:
                task.cancel()

    async def wait(self, timeout_s: float) -> str:
        """Wait up to ``timeout_s`` for the end; the outcome or ``running``."""
        if not self.done:
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            if self.done and not future.done():  # ended while we registered
                future.set_result(None)
            try:
                await asyncio.wait_for(future, timeout_s)
            except asyncio.TimeoutError:
                return RUNNING
        return self.outcome or FINISHED

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        self._ended = True
        for future in self._waiters:
            loop = future.get_loop()
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class CallRegistry:
    """The calls a worker runs now, by request id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, ActiveCall] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()

    def begin(self, request_id: str, tool: str) -> ActiveCall | None:
        """Register a call; None when it has no id. Raises CallCancelled when
        this id was cancelled before it arrived."""
        if not request_id:
            return None
        loop = _running_loop()
        with self._lock:
            if request_id in self._ended:
                raise CallCancelled(f"call {request_id} was cancelled before it arrived")
            call = ActiveCall(self, request_id, tool, loop)
            self._active[request_id] = call
            return call

    def end(self, call: ActiveCall, outcome: str) -> None:
        """The call ended (``FINISHED``, ``INTERRUPTED`` or ``CANCELLED``)."""
        if call.done:
            return
        with self._lock:
            self._active.pop(call.request_id, None)
            if call.cancel_requested:
                self._remember(call.request_id, outcome)
        call._finish(outcome)

    async def cancel(self, request_id: str, wait_s: float) -> str:
        """Cancel ``request_id`` and wait up to ``wait_s`` for it to end."""
        with self._lock:
            call = self._active.get(request_id)
            if call is None:
                known = self._ended.get(request_id)
                if known is None:
                    self._remember(request_id, UNKNOWN)
                return known or UNKNOWN
        call.cancel()
        return await call.wait(wait_s)

    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def _remember(self, request_id: str, outcome: str) -> None:
        self._ended[request_id] = outcome
        self._ended.move_to_end(request_id)
        while len(self._ended) > _REMEMBERED:
            self._ended.popitem(last=False)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    # Without raising when there is none (the lane's thread): cheaper.
    return asyncio.events._get_running_loop()
