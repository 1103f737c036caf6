"""The context of the tool call running in this task or thread.

One context variable, set by the tool runner for each call
(:class:`~snakepit_bridge.session_context.SessionContext` objects) and read
by the session API, by telemetry (an event's correlation id) and by log
records. It sits below all of them, importing none, so that telemetry does
not need the session API (which needs the Elixir bridge, which reports to
telemetry) to learn the correlation id.
"""

from __future__ import annotations

import contextvars
from typing import Protocol

__all__ = ["CallContext", "current", "correlation_id"]


class CallContext(Protocol):
    """What the layers below the session API read of a call's context."""

    @property
    def correlation_id(self) -> str: ...


current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "snakepit_session_context", default=None
)


def correlation_id() -> str:
    """The running call's correlation id ("" outside calls)."""
    ctx = current.get()
    return ctx.correlation_id if ctx is not None else ""
