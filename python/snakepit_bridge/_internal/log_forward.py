"""Python's logging, forwarded to Elixir's Logger.

Every record at or above the worker's level (``SNAKEPIT_LOG_LEVEL``, from
``config :snakepit, python_log_level``) is written to stderr as one line:
``SNAKEPIT_LOG`` and a JSON object with the level, the logger's name, the
file and line, the message (with the traceback of an exception, if any)
and the running call's correlation id. The worker's Elixir process turns
each into a ``Logger`` call at the mapped level with that metadata; plain
stdout and stderr lines (``print``, a thread's uncaught traceback) are
logged too. Python warnings go through logging (``py.warnings``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

from ..session_context import CorrelationLogFilter

PREFIX = "SNAKEPIT_LOG "

# The longest message forwarded; the Elixir side cuts lines anyway.
_MAX_MESSAGE = 16 * 1024

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    # Nothing is forwarded.
    "none": logging.CRITICAL + 10,
}


class ForwardFormatter(logging.Formatter):
    """One record as one ``SNAKEPIT_LOG {json}`` line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        elif record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        body = {
            "level": record.levelname,
            "logger": record.name,
            "file": record.pathname,
            "line": record.lineno,
            "message": message[:_MAX_MESSAGE],
            "correlation_id": getattr(record, "correlation_id", "") or "",
        }
        return PREFIX + json.dumps(body, ensure_ascii=False, default=str)


def level_of(name: str) -> int:
    return LEVELS.get(str(name).lower(), logging.WARNING)


def configure(level_name: str, stream: TextIO | None = None) -> logging.Handler:
    """Routes the root logger (and Python warnings) to Elixir."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(ForwardFormatter())
    # Each record of a tool call names its correlation id.
    handler.addFilter(CorrelationLogFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_of(level_name))
    logging.captureWarnings(True)
    return handler
