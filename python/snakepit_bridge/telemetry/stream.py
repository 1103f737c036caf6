"""Sends queued telemetry events to Elixir over ElixirBridge.StreamTelemetry
and applies the control messages Elixir sends back (acknowledging those that
carry a ``seq``).

On the wire an event's parts are its Elixir name after ``[:snakepit,
:python]``: the worker's own events (:data:`WORKER_EVENTS`, the same list as
``Snakepit.Telemetry.Naming.python_event_catalog/0``) as they are; any other
``emit`` as ``["event"]`` and a span as ``["span", phase]``, with the user's
dotted name in ``TelemetryEvent.name``. While forwarding is active the worker
also samples its memory every ``SNAKEPIT_TELEMETRY_MEMORY_MS``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tracemalloc
from typing import Any, AsyncIterator

import grpc

from .. import serialization
from .._internal import auth
from ..generated import snakepit_bridge_pb2 as pb
from .event_hub import TelemetryHub
from .event_hub import hub as default_hub
from .records import WORKER_EVENTS

log = logging.getLogger("snakepit_bridge.telemetry")

__all__ = ["TelemetryStream", "WORKER_EVENTS"]

_MAX_BACKOFF_S = 30.0
# After a wake-up the sender waits this long before draining, so the events
# of many calls leave in one message (one send and one wake-up in Elixir
# instead of one per event). A period, not a wait for a condition.
COALESCE_S = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def memory_sample() -> dict[str, int]:
    """RSS (from /proc), and the Python heap where it can be had: traced
    bytes when tracemalloc runs, allocated blocks always."""
    sample = {"allocated_blocks": sys.getallocatedblocks()}
    try:
        with open("/proc/self/statm", "rb") as f:
            sample["rss_bytes"] = int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    if tracemalloc.is_tracing():
        sample["heap_bytes"] = tracemalloc.get_traced_memory()[0]
    return sample


def wire_parts(record: Any) -> tuple[list[str], str]:
    """The parts and name an event travels with (see the module doc)."""
    if record.kind == "span":
        return ["span", record.parts[-1]], ".".join(record.parts[:-1])
    if tuple(record.parts) in WORKER_EVENTS:
        return list(record.parts), ""
    return ["event"], record.name


class TelemetryStream:
    """Background task keeping one StreamTelemetry call open while the worker runs."""

    def __init__(self, stub_factory: Any, worker_id: str = "", telemetry_hub: TelemetryHub | None = None):
        self._stub_factory = stub_factory
        self.worker_id = worker_id
        self.hub = telemetry_hub or default_hub
        self._task: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.memory_interval_s = int(os.environ.get("SNAKEPIT_TELEMETRY_MEMORY_MS", "10000") or 0) / 1000
        self.sent = 0
        # Set by the first control message (Elixir sends one on open), or
        # when the stream gives up.
        self._settled = asyncio.Event()

    async def wait_settled(self, timeout_s: float) -> bool:
        """Wait until Elixir told this worker whether to send events, so that
        its first calls already follow that; False after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.hub.worker_id = self.worker_id or self.hub.worker_id
        self.hub.start_buffering(loop)
        self._task = loop.create_task(self._run(), name="snakepit-telemetry")
        if self.memory_interval_s > 0:
            self._sampler = loop.create_task(self._sample_memory(), name="snakepit-telemetry-memory")

    async def stop(self) -> None:
        for task in (self._task, self._sampler):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
        self._task = self._sampler = None
        self.hub.stop_buffering()

    async def _sample_memory(self) -> None:
        while True:
            # A period, not a wait for a condition.
            await asyncio.sleep(self.memory_interval_s)
            if self.hub.forwarding:
                self.hub.emit(("memory", "sampled"), memory_sample(), {"python_pid": os.getpid()}, "")

    def _to_proto(self, record: Any) -> Any:
        dropped = self.hub.take_dropped()
        if record.control_ack:
            return pb.TelemetryEvent(control_ack=record.control_ack, worker_id=self.worker_id, dropped=dropped)
        parts, name = wire_parts(record)
        return pb.TelemetryEvent(
            event_parts=parts,
            name=name,
            measurements_json=_dumps_or_empty(record.measurements),
            metadata_json=_dumps_or_empty(record.metadata),
            timestamp_ns=record.timestamp_ns,
            correlation_id=record.correlation_id,
            worker_id=self.worker_id,
            dropped=dropped,
        )

    async def _events(self, finished: asyncio.Event) -> AsyncIterator[Any]:
        """Events for one StreamTelemetry call; ends once ``finished`` is set.

        grpc.aio does not cancel the task feeding a request iterator when the
        call fails, so without ``finished`` that task would wait here forever
        (and complain when the loop closes).
        """
        while not finished.is_set():
            records = self.hub.drain()
            if records:
                self.sent += len(records)
                yield pb.TelemetryEvent(batch=[self._to_proto(r) for r in records])
            more = asyncio.ensure_future(self.hub.wait_for_events())
            done = asyncio.ensure_future(finished.wait())
            try:
                await asyncio.wait({more, done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                more.cancel()
                done.cancel()
            if not finished.is_set():
                await asyncio.sleep(COALESCE_S)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            finished = asyncio.Event()
            try:
                worker = [("x-snakepit-worker-id", self.worker_id)] if self.worker_id else []
                call = self._stub_factory().StreamTelemetry(self._events(finished), metadata=worker + auth.metadata())
                try:
                    async for control in call:
                        backoff = 0.5
                        self.hub.apply_control(control)
                        self.hub.ack_control(control.seq)
                        self._settled.set()
                finally:
                    finished.set()
                log.debug("telemetry stream closed by Elixir; reconnecting")
            except asyncio.CancelledError:
                raise
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("Elixir bridge does not implement StreamTelemetry; telemetry stays local")
                    self.hub.stop_buffering()
                    self._settled.set()
                    return
                log.debug("telemetry stream failed (%s); retrying in %.1fs", code, backoff)
            except Exception:  # noqa: BLE001
                log.debug("telemetry stream error", exc_info=True)
            # Reconnect pacing, not a wait for a condition.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)


def _dumps_or_empty(value: Any) -> bytes:
    """An event's map as JSON; ``{}`` when it cannot travel (nested past
    max_nesting_depth, an integer past max_integer_digits): one bad event
    must not end the stream."""
    try:
        return serialization.dumps(value)
    except Exception:  # noqa: BLE001
        return b"{}"
