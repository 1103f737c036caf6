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

from .emitting import add_handler, emit, is_enabled, new_correlation_id, remove_handler, set_enabled, span
from .event_hub import DEFAULT_QUEUE_SIZE, TelemetryHub, hub
from .records import WORKER_EVENTS, Handler, TelemetryEventRecord, elixir_name

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
    "Handler",
    "TelemetryHub",
    "DEFAULT_QUEUE_SIZE",
]
