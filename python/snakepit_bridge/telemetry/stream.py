"""Sends queued telemetry events to Elixir over ElixirBridge.StreamTelemetry
and applies the control messages Elixir sends back.

Python event names (after the ``[:snakepit, :python]`` prefix) that the worker
itself emits are listed in :data:`WORKER_EVENTS`; adapters may emit others,
which Elixir drops unless its catalog knows them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

import grpc

from .. import serialization
from .._internal import auth
from ..generated import snakepit_bridge_pb2 as pb
from . import TelemetryHub
from . import hub as default_hub

log = logging.getLogger("snakepit_bridge.telemetry")

__all__ = ["TelemetryStream", "WORKER_EVENTS"]

# event parts -> measurement keys
WORKER_EVENTS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("tool", "execution", "start"): ("system_time",),
    ("tool", "execution", "stop"): ("duration",),
    ("tool", "execution", "exception"): ("duration",),
}

_MAX_BACKOFF_S = 30.0


class TelemetryStream:
    """Background task keeping one StreamTelemetry call open while the worker runs."""

    def __init__(self, stub_factory: Any, worker_id: str = "", telemetry_hub: TelemetryHub | None = None):
        self._stub_factory = stub_factory
        self.worker_id = worker_id
        self.hub = telemetry_hub or default_hub
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.hub.worker_id = self.worker_id or self.hub.worker_id
        self.hub.start_buffering(loop)
        self._task = loop.create_task(self._run(), name="snakepit-telemetry")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.hub.stop_buffering()

    def _to_proto(self, record: Any) -> Any:
        return pb.TelemetryEvent(
            event_parts=record.parts,
            measurements_json=serialization.dumps(record.measurements),
            metadata_json=serialization.dumps(record.metadata),
            timestamp_ns=record.timestamp_ns,
            correlation_id=record.correlation_id,
            worker_id=self.worker_id,
        )

    async def _events(self, finished: asyncio.Event) -> AsyncIterator[Any]:
        """Events for one StreamTelemetry call; ends once ``finished`` is set.

        grpc.aio does not cancel the task feeding a request iterator when the
        call fails, so without ``finished`` that task would wait here forever
        (and complain when the loop closes).
        """
        while not finished.is_set():
            for record in self.hub.drain():
                self.sent += 1
                yield self._to_proto(record)
            more = asyncio.ensure_future(self.hub.wait_for_events())
            done = asyncio.ensure_future(finished.wait())
            try:
                await asyncio.wait({more, done}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                more.cancel()
                done.cancel()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            finished = asyncio.Event()
            try:
                call = self._stub_factory().StreamTelemetry(self._events(finished), metadata=auth.metadata())
                try:
                    async for control in call:
                        backoff = 0.5
                        self.hub.apply_control(control)
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
                    return
                log.debug("telemetry stream failed (%s); retrying in %.1fs", code, backoff)
            except Exception:  # noqa: BLE001
                log.debug("telemetry stream error", exc_info=True)
            # Reconnect pacing, not a wait for a condition.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
