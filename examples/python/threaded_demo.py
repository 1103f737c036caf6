"""A thread-safe adapter for examples/threaded_profile_demo.exs: its tools
keep no shared mutable state, so one process may run them in threads."""

from __future__ import annotations

import os
import threading
import time

from snakepit_bridge import ThreadSafeAdapter, tool


class ThreadedDemo(ThreadSafeAdapter):
    @tool(description="Sleep ms milliseconds (the GIL is released meanwhile); report pid and thread")
    def sleep(self, ms: int = 100) -> dict:
        time.sleep(max(ms, 0) / 1000)
        return {"pid": os.getpid(), "thread": threading.current_thread().name}
