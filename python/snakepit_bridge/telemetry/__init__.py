"""Telemetry from Python workers.

    from snakepit_bridge import telemetry

    telemetry.emit("model.inference", {"latency_ms": 45}, {"model": "small"})

    with telemetry.span("data_processing", {"stage": "preprocessing"}):
        preprocess()

Event names are dotted; on the wire they travel as parts (``"model.inference"``
-> ``["model", "inference"]``) and Elixir re-emits them under
``[:snakepit, :python | parts]`` when it knows the event. ``span(name)`` emits
``name.start`` (measurement ``system_time``), then ``name.stop`` or
``name.exception`` (measurement ``duration``, nanoseconds).

Events are queued in a bounded buffer (oldest dropped when full, and
counted) and sent over ElixirBridge.StreamTelemetry while Elixir says someone
listens there; local handlers (:func:`add_handler`) get them either way. In
Elixir a user's ``emit("model.inference", ...)`` arrives as
``[:snakepit, :python, :event]`` with ``metadata.name == "model.inference"``,
and ``span("x")`` as ``[:snakepit, :python, :span, :start | :stop |
:exception]`` with ``name`` ``"x"``. Elixir can switch telemetry off, change
the sampling rate, or filter events at runtime. ``emit`` never raises, and
costs a few attribute reads when nobody listens.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import logging
import os
import random
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

log = logging.getLogger("snakepit_bridge.telemetry")

__all__ = [
    "emit",
    "span",
    "add_handler",
    "remove_handler",
    "is_enabled",
    "set_enabled",
    "new_correlation_id",
    "TelemetryEventRecord",
    "WORKER_EVENTS",
    "elixir_name",
    "hub",
]

Handler = Callable[["TelemetryEventRecord"], None]

# event parts -> measurement keys
WORKER_EVENTS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("call", "start"): ("system_time",),
    ("call", "stop"): ("duration",),
    ("call", "exception"): ("duration",),
    ("memory", "sampled"): ("rss_bytes", "heap_bytes", "allocated_blocks"),
    ("tool", "execution", "start"): ("system_time",),
    ("tool", "execution", "stop"): ("duration",),
    ("tool", "execution", "exception"): ("duration",),
}


def elixir_name(parts: Sequence[str], kind: str) -> str:
    """The dotted name an event has in Elixir after ``python.``: a worker
    event's own, ``span.<phase>`` for spans, ``event`` for the rest."""
    if kind == "span":
        return "span." + parts[-1]
    if tuple(parts) in WORKER_EVENTS:
        return ".".join(parts)
    return "event"
DEFAULT_QUEUE_SIZE = 1024


class TelemetryEventRecord:
    """One event, as queued (and handed to local handlers)."""

    __slots__ = ("parts", "measurements", "metadata", "timestamp_ns", "correlation_id", "kind", "control_ack")

    def __init__(
        self,
        parts: list[str],
        measurements: dict[str, Any],
        metadata: dict[str, Any],
        timestamp_ns: int,
        correlation_id: str,
        kind: str = "event",
        control_ack: int = 0,
    ):
        self.parts = parts
        self.measurements = measurements
        self.metadata = metadata
        self.timestamp_ns = timestamp_ns
        self.correlation_id = correlation_id
        # "event" (emit) or "span" (span(): the last part is the phase).
        self.kind = kind
        # Not an event: the answer to the control message with this seq.
        self.control_ack = control_ack

    @property
    def name(self) -> str:
        return ".".join(self.parts)

    def __repr__(self) -> str:
        return f"<telemetry {self.name} {self.measurements}>"


def _parts(event: str | Sequence[str]) -> list[str]:
    if isinstance(event, str):
        parts = [p for p in event.split(".") if p]
    else:
        parts = [str(p) for p in event if str(p)]
    # A leading "python" duplicates the prefix Elixir adds.
    if len(parts) > 1 and parts[0] == "python":
        parts = parts[1:]
    return parts


class TelemetryHub:
    """Process-wide event buffer, runtime controls and local handlers."""

    def __init__(self, maxlen: int = DEFAULT_QUEUE_SIZE):
        self.enabled = True
        self.worker_id = ""
        self.sampling_rate = 1.0
        self.sampling_patterns: list[str] = []
        self.allow: list[str] = []
        self.deny: list[str] = []
        self.dropped = 0
        # Elixir says whether anyone listens there; until then, the
        # environment the worker was started with.
        self.forwarding = os.environ.get("SNAKEPIT_TELEMETRY_FORWARD", "1") != "0"
        self._buffer: collections.deque[TelemetryEventRecord] = collections.deque(maxlen=maxlen)
        self._reported = 0
        self._handlers: list[Handler] = []
        self._control_listeners: list[Callable[[Any], None]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._wakeup_pending = False
        self._buffering = False
        # _buffering and forwarding: events go to Elixir.
        self._sending = False

    # ------------------------------------------------------------ controls

    def _matches(self, names: Sequence[str], patterns: Sequence[str]) -> bool:
        """Patterns match an event's own name or its Elixir name, with or
        without the ``python.`` prefix."""
        return any(
            fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase("python." + n, p) for n in names for p in patterns
        )

    def admits(self, name: str, elixir: str | None = None) -> bool:
        if not self.enabled:
            return False
        names = (name,) if elixir is None or elixir == name else (name, elixir)
        if self.allow and not self._matches(names, self.allow):
            return False
        if self.deny and self._matches(names, self.deny):
            return False
        if self.sampling_rate < 1.0:
            if not self.sampling_patterns or self._matches(names, self.sampling_patterns):
                if random.random() >= self.sampling_rate:
                    return False
        return True

    def apply_control(self, control: Any) -> None:
        """Apply a TelemetryControl protobuf message from Elixir."""
        which = control.WhichOneof("control")
        if which == "toggle":
            self.enabled = bool(control.toggle.enabled)
        elif which == "sampling":
            rate = float(control.sampling.sampling_rate)
            self.sampling_rate = min(max(rate, 0.0), 1.0)
            self.sampling_patterns = list(control.sampling.event_patterns)
        elif which == "filter":
            self.allow = list(control.filter.allow)
            self.deny = list(control.filter.deny)
        elif which == "forwarding":
            self.forwarding = bool(control.forwarding.active)
            self._sending = self._buffering and self.forwarding
        for listener in list(self._control_listeners):
            try:
                listener(control)
            except Exception:  # noqa: BLE001
                log.debug("telemetry control listener failed", exc_info=True)

    def add_control_listener(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(control)`` after each control message is applied."""
        self._control_listeners.append(listener)

    def remove_control_listener(self, listener: Callable[[Any], None]) -> None:
        try:
            self._control_listeners.remove(listener)
        except ValueError:
            pass

    def reset(self) -> None:
        """Back to defaults (tests)."""
        with self._lock:
            self.enabled = True
            self.worker_id = ""
            self.sampling_rate = 1.0
            self.sampling_patterns = []
            self.allow = []
            self.deny = []
            self.dropped = 0
            self._reported = 0
            self.forwarding = True
            self._sending = self._buffering
            self._buffer.clear()
            self._handlers.clear()
            self._control_listeners.clear()

    # ------------------------------------------------------------ emitting

    def emit(
        self,
        event: str | Sequence[str],
        measurements: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        kind: str = "event",
    ) -> None:
        # The usual case in a worker: nobody listens (no handler, and Elixir
        # has no handler either), so build nothing.
        if not self._handlers and not self._sending:
            return
        try:
            parts = _parts(event)
            if not parts:
                return
            name = ".".join(parts)
            if not self.admits(name, elixir_name(parts, kind)):
                return
            meta = dict(metadata or {})
            if self.worker_id and "worker_id" not in meta:
                meta["worker_id"] = self.worker_id
            if correlation_id is None:
                correlation_id = _current_correlation_id()
            record = TelemetryEventRecord(
                parts, dict(measurements or {}), meta, time.time_ns(), correlation_id or "", kind
            )
            for handler in list(self._handlers):
                try:
                    handler(record)
                except Exception:  # noqa: BLE001 - a bad handler must not break tools
                    log.debug("telemetry handler failed", exc_info=True)
            if self._sending:
                self._enqueue(record)
        except Exception:  # noqa: BLE001 - emit never raises
            log.debug("telemetry emit failed", exc_info=True)

    def _enqueue(self, record: TelemetryEventRecord) -> None:
        with self._lock:
            if len(self._buffer) == self._buffer.maxlen:
                self.dropped += 1
            self._buffer.append(record)
        self._wake()

    def ack_control(self, seq: int) -> None:
        """Tell Elixir the control message ``seq`` is applied (sent even
        while events are not)."""
        if seq and self._buffering:
            self._enqueue(TelemetryEventRecord([], {}, {}, time.time_ns(), "", control_ack=seq))

    def _wake(self) -> None:
        loop, wakeup = self._loop, self._wakeup
        if loop is None or wakeup is None or self._wakeup_pending:
            return
        self._wakeup_pending = True
        try:
            loop.call_soon_threadsafe(wakeup.set)
        except RuntimeError:
            self._wakeup_pending = False

    # ------------------------------------------------------------ draining

    def start_buffering(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin queueing events for a sender running on ``loop``."""
        self._loop = loop
        self._wakeup = asyncio.Event()
        # A wake-up scheduled on an earlier loop that closed never ran.
        self._wakeup_pending = False
        self._buffering = True
        self._sending = self.forwarding

    def stop_buffering(self) -> None:
        self._buffering = False
        self._sending = False
        self._loop = None
        self._wakeup = None
        self._wakeup_pending = False
        with self._lock:
            self._buffer.clear()

    def drain(self) -> list[TelemetryEventRecord]:
        with self._lock:
            items = list(self._buffer)
            self._buffer.clear()
        return items

    def take_dropped(self) -> int:
        """Events dropped since the last call (reported to Elixir)."""
        with self._lock:
            dropped, self._reported = self.dropped - self._reported, self.dropped
        return dropped

    async def wait_for_events(self) -> None:
        wakeup = self._wakeup
        if wakeup is None:
            raise RuntimeError("telemetry buffering is not started")
        with self._lock:
            if self._buffer:
                return
        await wakeup.wait()
        wakeup.clear()
        self._wakeup_pending = False

    # ------------------------------------------------------------ handlers

    def add_handler(self, handler: Handler) -> Handler:
        self._handlers.append(handler)
        return handler

    def remove_handler(self, handler: Handler) -> None:
        try:
            self._handlers.remove(handler)
        except ValueError:
            pass


hub = TelemetryHub()

def _current_correlation_id() -> str:
    from ..session_context import current_context

    ctx = current_context()
    if ctx is not None and ctx.correlation_id:
        return ctx.correlation_id
    return ""


def new_correlation_id() -> str:
    return uuid.uuid4().hex


def emit(
    event: str | Sequence[str],
    measurements: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    correlation_id: str | None = None,
) -> None:
    """Emit one event (never raises)."""
    hub.emit(event, measurements, metadata, correlation_id)


@contextmanager
def span(
    event: str | Sequence[str],
    metadata: Mapping[str, Any] | None = None,
    *,
    correlation_id: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Time a block: emits ``<event>.start``, then ``.stop`` or ``.exception``.

    Yields a dict; keys added to it are included in the stop event's metadata.
    Exceptions propagate after the ``.exception`` event.
    """
    parts = _parts(event)
    meta = dict(metadata or {})
    extra: dict[str, Any] = {}
    start = time.perf_counter_ns()
    hub.emit(parts + ["start"], {"system_time": time.time_ns()}, meta, correlation_id, "span")
    try:
        yield extra
    except BaseException as exc:
        duration = time.perf_counter_ns() - start
        hub.emit(
            parts + ["exception"],
            {"duration": duration},
            {**meta, **extra, "error_type": type(exc).__name__, "error_message": str(exc)[:500]},
            correlation_id,
            "span",
        )
        raise
    duration = time.perf_counter_ns() - start
    hub.emit(parts + ["stop"], {"duration": duration}, {**meta, **extra}, correlation_id, "span")


def add_handler(handler: Handler) -> Handler:
    """Call ``handler(record)`` for every admitted event (in the emitting thread)."""
    return hub.add_handler(handler)


def remove_handler(handler: Handler) -> None:
    hub.remove_handler(handler)


def is_enabled() -> bool:
    return hub.enabled


def set_enabled(enabled: bool) -> None:
    hub.enabled = bool(enabled)
