"""How a worker's startup fails: :class:`StartupError` carries the one-line
cause the command line prints after ``SNAKEPIT_STARTUP_ERROR``."""

from __future__ import annotations

__all__ = ["StartupError", "describe"]


class StartupError(Exception):
    """Startup failed; ``message`` is the one-line cause."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.message = " ".join(message.split())
        self.cause = cause


def describe(exc: BaseException) -> str:
    """An exception in one line: its class, and its message when it has one."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
