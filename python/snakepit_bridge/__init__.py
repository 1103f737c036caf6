"""snakepit_bridge: the Python half of Snakepit.

Each Snakepit worker is a Python process running
``python -m snakepit_bridge.server --adapter module.Class ...``. The adapter is
a class whose ``@tool`` methods Elixir calls by name::

    from snakepit_bridge import BaseAdapter, tool

    class MyAdapter(BaseAdapter):
        @tool(description="Add two numbers")
        def add(self, a: int, b: int) -> int:
            return a + b

Public surface: :class:`BaseAdapter`, :func:`tool`, :class:`ThreadSafeAdapter`,
:func:`thread_safe_method`, :class:`SessionContext`, :class:`StreamChunk` and
the :mod:`snakepit_bridge.telemetry` module.
"""

from __future__ import annotations

from . import telemetry
from .base_adapter import BaseAdapter, tool
from .base_adapter_threaded import ThreadSafeAdapter, thread_safe_method
from .errors import (
    ElixirBridgeUnavailable,
    ElixirToolError,
    StreamCancelled,
    ToolNotFoundError,
)
from .session_context import SessionContext
from .streaming import StreamChunk, ToolStream

__version__ = "0.13.0"

__all__ = [
    "BaseAdapter",
    "ThreadSafeAdapter",
    "SessionContext",
    "StreamChunk",
    "ToolStream",
    "ToolNotFoundError",
    "ElixirToolError",
    "ElixirBridgeUnavailable",
    "StreamCancelled",
    "telemetry",
    "thread_safe_method",
    "tool",
    "__version__",
]
