"""The functions adapter code calls: :func:`emit` an event, time a block
with :func:`span`, add local handlers, switch telemetry on or off (see the
package's documentation)."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from .event_hub import hub
from .records import Handler, event_parts

__all__ = ["emit", "span", "add_handler", "remove_handler", "is_enabled", "set_enabled", "new_correlation_id"]


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
    parts = event_parts(event)
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
