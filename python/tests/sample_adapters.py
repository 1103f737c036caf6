"""Adapters used by the tests (importable by worker subprocesses too)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from snakepit_bridge import BaseAdapter, StreamChunk, ThreadSafeAdapter, thread_safe_method, tool


class Gate:
    """Lets a test hold a tool inside its body until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.closed = threading.Event()
        self.produced = 0


class TestAdapter(BaseAdapter):
    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.init_calls = 0
        self.cleanup_calls = 0
        self.seen_contexts: list[Any] = []

    async def initialize(self) -> None:
        self.init_calls += 1

    def cleanup(self) -> None:
        self.cleanup_calls += 1

    @tool
    def add(self, a: int, b: int) -> int:
        return a + b

    @tool
    async def async_add(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @tool
    def blob(self, size: int = 4) -> bytes:
        return bytes(range(size))

    @tool
    def binary_len(self, data: bytes, label: str = "") -> dict:
        return {"len": len(data), "type": type(data).__name__, "label": label}

    @tool
    def fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    @tool
    def unserializable(self) -> Any:
        return {"ok": 1, "thing": object()}

    @tool
    def blocking(self) -> str:
        """Waits until the test releases the gate."""
        self.gate.entered.set()
        if not self.gate.release.wait(30):
            raise TimeoutError("gate never released")
        return "released"

    @tool
    def context_info(self) -> dict:
        ctx = self.session_context
        self.seen_contexts.append(ctx)
        return {
            "session_id": ctx.session_id,
            "request_id": ctx.request_id,
            "tool_name": ctx.tool_name,
            "metadata": ctx.metadata,
            "worker_id": ctx.worker_id,
        }

    @tool
    async def async_context_info(self) -> dict:
        ctx = self.session_context
        return {"session_id": ctx.session_id}

    # ---------------------------------------------------------------- streams

    @tool
    def count(self, n: int = 3):
        for i in range(n):
            yield {"i": i}

    @tool
    def count_with_return(self, n: int = 2):
        yield from range(n)
        return {"done": True, "n": n}

    @tool
    async def acount(self, n: int = 3):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"i": i}

    @tool
    def sender(self, items: list, stream) -> dict:
        for item in items:
            stream.send(item)
        return {"total": len(items)}

    @tool
    async def async_sender(self, items: list, stream) -> None:
        for item in items:
            await stream.asend(item)

    @tool
    def explicit_final(self):
        yield StreamChunk({"step": 1}, metadata={"phase": "work"})
        yield StreamChunk({"step": 2}, is_final=True, metadata={"phase": "done", "n": 2})
        yield {"never": "sent"}

    @tool
    def binary_stream(self):
        yield b"\x00\x01"
        yield {"json": True}

    @tool
    def fails_midway(self):
        yield {"i": 0}
        raise RuntimeError("stream broke")

    @tool
    def exits_midway(self, how: str = "exit"):
        """A producer that ends by SystemExit or a bare BaseException."""
        yield {"i": 0}
        if how == "exit":
            raise SystemExit(3)
        raise BaseException("bare base exception")

    @tool
    async def aexits_midway(self, how: str = "exit"):
        yield {"i": 0}
        if how == "exit":
            raise SystemExit(4)
        raise BaseException("bare base exception")

    @tool
    def endless(self):
        """Yields until the consumer goes away; records how far it got."""
        gate = self.gate
        try:
            i = 0
            while True:
                yield {"i": i}
                i += 1
                gate.produced = i
        finally:
            gate.closed.set()

    @tool
    def endless_big(self, size: int = 256 * 1024):
        """Like endless, with large items (so transport buffers hold few)."""
        gate = self.gate
        payload = "x" * size
        try:
            i = 0
            while True:
                yield {"i": i, "payload": payload}
                i += 1
                gate.produced = i
        finally:
            gate.closed.set()

    @tool
    async def aendless(self):
        gate = self.gate
        try:
            i = 0
            while True:
                yield {"i": i}
                i += 1
                await asyncio.sleep(0)
        finally:
            gate.closed.set()


class LegacyAdapter:
    """Older style: one execute_tool entry point, no BaseAdapter."""

    def __init__(self) -> None:
        self.session_context = None

    def execute_tool(self, tool_name: str, arguments: dict, context: Any) -> Any:
        if tool_name == "whoami":
            return {"tool": tool_name, "args": arguments, "session_id": context.session_id}
        if tool_name == "numbers":
            return (i for i in range(3))
        raise KeyError(f"no tool {tool_name}")


class NotThreadSafe(BaseAdapter):
    @tool
    def ping(self) -> str:
        return "pong"


class Threaded(ThreadSafeAdapter):
    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=15)
        # bump's callers start together, so their loops really overlap.
        self.bump_start = threading.Barrier(4, timeout=15)
        # bump_pair's callers meet here, inside the section, when they can.
        self.pair_start = threading.Barrier(2, timeout=15)
        self.pair = threading.Barrier(2)
        self.counter = 0

    @tool
    @thread_safe_method
    def rendezvous(self) -> str:
        # Both calls must be inside this method at the same time to pass.
        self.barrier.wait()
        return threading.current_thread().name

    @tool
    @thread_safe_method
    def bump(self, times: int = 1000, locked: bool = True) -> int:
        """Four concurrent calls each add `times` to the counter. The critical
        section reads, yields the GIL (time.sleep(0)), then writes: without
        the lock the other threads run in between and updates get lost."""
        self.bump_start.wait()
        for _ in range(times):
            if locked:
                with self.acquire_lock():
                    self._racy_increment()
            else:
                self._racy_increment()
        return self.counter

    def _racy_increment(self) -> None:
        value = self.counter
        time.sleep(0)
        self.counter = value + 1

    @tool
    @thread_safe_method
    def bump_pair(self, locked: bool = True, meet_s: float = 0.5) -> bool:
        """Two concurrent calls start together, each reads the counter, then
        tries to meet the other inside the section (for up to meet_s), then
        writes. Without the lock they meet, both having read the same value:
        one update is lost, every time. With it the other cannot get in: the
        meeting times out and both updates count. Returns whether this call
        met the other inside."""
        self.pair_start.wait()

        def section() -> bool:
            value = self.counter
            try:
                self.pair.wait(timeout=meet_s)
                met = True
            except threading.BrokenBarrierError:
                met = False
            self.counter = value + 1
            return met

        if locked:
            with self.acquire_lock():
                return section()
        return section()

    @tool
    @thread_safe_method
    def local_cache(self, key: str, value: Any = None) -> Any:
        cache = self.get_thread_local("cache", {})
        if value is not None:
            cache[key] = value
            self.set_thread_local("cache", cache)
        return cache.get(key)


# ------------------------------------------------------------------ startup variants


class FailingInit(BaseAdapter):
    def initialize(self) -> None:
        raise RuntimeError("model file missing")

    @tool
    def ping(self) -> str:
        return "pong"


class FailingConstructor(BaseAdapter):
    def __init__(self) -> None:
        raise ValueError("bad config")


class SlowInit(BaseAdapter):
    """initialize() announces itself on stdout, then never finishes."""

    def initialize(self) -> None:
        print("INIT_STARTED", flush=True)
        threading.Event().wait(600)

    @tool
    def ping(self) -> str:
        return "pong"


class CleanupRecorder(BaseAdapter):
    """Writes a line to $SNAKEPIT_TEST_MARKER on initialize and on cleanup."""

    def _mark(self, text: str) -> None:
        path = os.environ.get("SNAKEPIT_TEST_MARKER")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text + "\n")

    async def initialize(self) -> None:
        self._mark("initialize")

    async def cleanup(self) -> None:
        self._mark("cleanup")

    @tool
    def ping(self) -> dict:
        return {"pid": os.getpid()}

    @tool
    def hang(self) -> str:
        threading.Event().wait(600)
        return "never"

    @tool
    def print_to_stdout(self) -> str:
        print("hello from a tool")
        return "printed"


class ProcessInfo(CleanupRecorder):
    """Reports the process state a worker runs with (fork server tests)."""

    @tool
    def process_info(self) -> dict:
        import signal
        import sys

        return {
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "environ": dict(os.environ),
            "argv": sys.argv,
            "path": sys.path,
            "signals": {
                name: str(signal.getsignal(getattr(signal, name)))
                for name in ("SIGCHLD", "SIGPIPE", "SIGTERM", "SIGINT")
            },
            "stdout_write_through": sys.stdout.write_through,
        }


def marker_lines(path: str | Path) -> list[str]:
    p = Path(path)
    return p.read_text(encoding="utf-8").splitlines() if p.exists() else []
