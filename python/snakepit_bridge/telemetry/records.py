"""What a telemetry event is: its record as queued and handed to local
handlers, and the names it has in Elixir."""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["Handler", "TelemetryEventRecord", "WORKER_EVENTS", "elixir_name", "event_parts"]

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


def event_parts(event: str | Sequence[str]) -> list[str]:
    """A dotted name or a sequence of parts, as the parts it travels with."""
    if isinstance(event, str):
        parts = [p for p in event.split(".") if p]
    else:
        parts = [str(p) for p in event if str(p)]
    # A leading "python" duplicates the prefix Elixir adds.
    if len(parts) > 1 and parts[0] == "python":
        parts = parts[1:]
    return parts
