"""OpenTelemetry spans for tool calls, when the worker has ``opentelemetry-api``.

Each call runs in a span ``snakepit.tool <name>`` that is a child of the W3C
``traceparent`` Elixir sent in the request's metadata (a root span when there
is none), current while the tool runs, so spans the tool makes itself nest
under it. Attributes: ``snakepit.tool``, ``snakepit.correlation_id``,
``snakepit.session_id``, ``snakepit.worker_id``. A failing call sets the
span's status to error and records the exception. Where the API is not
installed every function here is a no-op. Spans are exported wherever the
worker's tracer provider sends them (with no SDK configured: nowhere).
"""

from __future__ import annotations

from typing import Any, Mapping

try:  # optional dependency
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
    from opentelemetry.trace import ProxyTracerProvider, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _propagator: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - depends on the environment
    _trace = None  # type: ignore[assignment]

__all__ = ["available", "start_call", "fail_call", "fail_current", "detach", "end_call"]

Handle = Any


def available() -> bool:
    """The API is installed and a tracer provider is set (an SDK's): until
    then spans would go nowhere, so none are made and calls pay nothing."""
    return _trace is not None and not isinstance(_trace.get_tracer_provider(), ProxyTracerProvider)


def start_call(tool: str, metadata: Mapping[str, str], session_id: str = "", worker_id: str = "") -> Handle:
    """Start the call's span and make it current; returns what :func:`end_call` needs."""
    if _trace is None:
        return None
    traceparent = metadata.get("traceparent")
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    attributes = {"snakepit.tool": tool}
    for key, value in (
        ("snakepit.correlation_id", metadata.get("correlation_id", "")),
        ("snakepit.session_id", session_id),
        ("snakepit.worker_id", worker_id),
    ):
        if value:
            attributes[key] = value
    tracer = _trace.get_tracer("snakepit_bridge")
    span = tracer.start_span(f"snakepit.tool {tool}", context=parent, attributes=attributes)
    token = _context.attach(_trace.set_span_in_context(span, parent))
    return (span, token)


def fail_call(handle: Handle, exc: BaseException) -> None:
    if handle is None:
        return
    span = handle[0]
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))


def fail_current(exc: BaseException) -> None:
    """Mark the current span (the call's, when one runs) as failed."""
    if _trace is None:
        return
    span = _trace.get_current_span()
    if span.is_recording():
        fail_call((span, None), exc)


def detach(handle: Handle) -> None:
    """No longer current here (the span goes on until :func:`end_call`)."""
    if handle is not None and handle[1] is not None:
        _context.detach(handle[1])


def end_call(handle: Handle, *, attached: bool = True) -> None:
    if handle is None:
        return
    if attached:
        detach(handle)
    handle[0].end()
