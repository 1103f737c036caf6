"""Adapters for the benchmarks in bench/ (put on the workers' path by them)."""

from __future__ import annotations

import os
import time
from typing import Any

from snakepit_bridge import ThreadSafeAdapter, tool


class ThreadedPing(ThreadSafeAdapter):
    """The showcase's ping, declared thread-safe for thread-profile pools."""

    @tool(description="Health check: answers pong")
    def ping(self, message: str = "pong", **_extra: Any) -> dict[str, Any]:
        return {"status": "pong", "message": message, "timestamp": time.time(), "pid": os.getpid()}
