"""The process-wide telemetry hub: the bounded buffer of events waiting to
go to Elixir, the controls Elixir sets (on/off, sampling, filters,
forwarding) and the local handlers."""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from .._internal import call_context
from .records import Handler, TelemetryEventRecord, elixir_name, event_parts

log = logging.getLogger("snakepit_bridge.telemetry")

__all__ = ["DEFAULT_QUEUE_SIZE", "TelemetryHub", "hub"]

DEFAULT_QUEUE_SIZE = 1024


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
            parts = event_parts(event)
            if not parts:
                return
            name = ".".join(parts)
            if not self.admits(name, elixir_name(parts, kind)):
                return
            meta = dict(metadata or {})
            if self.worker_id and "worker_id" not in meta:
                meta["worker_id"] = self.worker_id
            if correlation_id is None:
                correlation_id = call_context.correlation_id()
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
