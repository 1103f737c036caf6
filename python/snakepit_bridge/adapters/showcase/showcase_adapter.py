"""ShowcaseAdapter: the default adapter. Its tools demonstrate each feature of
the bridge; Snakepit's integration tests call them too (tools that only tests
need live in the test fixtures, not here).

Basic: ping, echo, add, adapter_info, process_text, get_stats.
ML / binary: ml_analyze_text, process_binary.
Streaming: stream_data, ping_stream, stream_progress.
Concurrency / bridge: concurrent_demo, call_elixir_demo.
Process and errors: sleep, sleep_task, get_pid, error_demo, serialization_demo.
Zero copy (NumPy / pyarrow): array_stats, scale_array, table_stats, make_table.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime
import decimal
import hashlib
import os
import platform
import resource
import threading
import time
import uuid
import zlib
from typing import Any, AsyncIterator, Iterator

from ... import telemetry, zero_copy
from ...base_adapter import BaseAdapter, tool
from ...streaming import StreamChunk

__all__ = ["ShowcaseAdapter"]

VERSION = "1.0.0"

_ERRORS: dict[str, type[BaseException]] = {
    "value": ValueError,
    "type": TypeError,
    "key": KeyError,
    "runtime": RuntimeError,
    "index": IndexError,
    "attribute": AttributeError,
    "zero_division": ZeroDivisionError,
    "zerodivision": ZeroDivisionError,
    "not_implemented": NotImplementedError,
    "notimplemented": NotImplementedError,
    "io": IOError,
    "os": OSError,
    "file_not_found": FileNotFoundError,
    "filenotfound": FileNotFoundError,
    "permission": PermissionError,
    "timeout": TimeoutError,
    "assertion": AssertionError,
    "lookup": LookupError,
    "arithmetic": ArithmeticError,
    "overflow": OverflowError,
    "memory": MemoryError,
    "exception": Exception,
    "generic": Exception,
}

_POSITIVE = {"good", "great", "excellent", "love", "happy", "wonderful", "amazing", "nice", "best", "fantastic", "like"}
_NEGATIVE = {"bad", "terrible", "awful", "hate", "sad", "worst", "horrible", "poor", "angry", "dislike", "ugly"}


def _error_class(error_type: str) -> type[BaseException]:
    key = error_type.strip()
    lowered = key.lower()
    if lowered.endswith("error") and lowered not in _ERRORS:
        lowered = lowered[: -len("error")]
    lowered = lowered.replace("-", "_")
    if lowered in _ERRORS:
        return _ERRORS[lowered]
    builtin = getattr(builtins, key, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return builtin
    raise ValueError(
        f"unknown error_type '{error_type}'; use one of: " + ", ".join(sorted(_ERRORS))
    )


class ShowcaseAdapter(BaseAdapter):
    """Default Snakepit adapter: one demonstration tool per feature of the bridge."""

    def __init__(self) -> None:
        super().__init__()
        self.started_at = time.time()
        self.call_count = 0
        self._count_lock = threading.Lock()

    def _count(self) -> None:
        with self._count_lock:
            self.call_count += 1

    # ------------------------------------------------------------ basic

    @tool(description="Health check: answers pong")
    def ping(self, message: str = "pong", **_extra: Any) -> dict[str, Any]:
        self._count()
        return {
            "status": "pong",
            "message": message,
            "timestamp": time.time(),
            "pid": os.getpid(),
        }

    @tool(description="Return the arguments unchanged")
    def echo(self, **kwargs: Any) -> dict[str, Any]:
        self._count()
        return kwargs

    @tool(description="Add two numbers")
    def add(self, a: int | float, b: int | float) -> dict[str, Any]:
        self._count()
        return {"result": a + b}

    @tool(description="Describe this adapter and its tools")
    def adapter_info(self) -> dict[str, Any]:
        self._count()
        return {
            "adapter_name": type(self).__name__,
            "name": type(self).__name__,
            "version": VERSION,
            "tools": self.list_tools(),
            "capabilities": ["tools", "streaming", "binary", "sessions", "elixir_tools", "telemetry"],
            "python_version": platform.python_version(),
            "pid": os.getpid(),
        }

    @tool(description="Text operations: upper, lower, reverse, length, title, words")
    def process_text(self, text: str, operation: str = "upper") -> dict[str, Any]:
        """Apply an operation to text.

        Args:
            text: the input text.
            operation: upper, lower, reverse, length, title or words.
        """
        self._count()
        operations = {
            "upper": lambda t: t.upper(),
            "lower": lambda t: t.lower(),
            "reverse": lambda t: t[::-1],
            "length": len,
            "title": lambda t: t.title(),
            "words": lambda t: len(t.split()),
        }
        if operation not in operations:
            raise ValueError(f"unknown operation '{operation}'; use one of: {', '.join(operations)}")
        return {"result": operations[operation](text), "operation": operation, "success": True}

    @tool(description="Adapter and system statistics")
    def get_stats(self) -> dict[str, Any]:
        self._count()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            load = list(os.getloadavg())
        except OSError:
            load = []
        return {
            "adapter": {
                "name": type(self).__name__,
                "version": VERSION,
                "uptime_s": round(time.time() - self.started_at, 3),
                "call_count": self.call_count,
                "tool_count": len(self.list_tools()),
            },
            "system": {
                "pid": os.getpid(),
                "platform": platform.platform(),
                "python_version": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "load_average": load,
                "max_rss_kb": usage.ru_maxrss,
                "user_cpu_s": usage.ru_utime,
                "system_cpu_s": usage.ru_stime,
                "thread_count": threading.active_count(),
            },
        }

    # ------------------------------------------------------------ ML / binary

    @tool(description="Simple lexicon-based text analysis")
    def ml_analyze_text(self, text: str) -> dict[str, Any]:
        self._count()
        words = [w.strip(".,!?;:\"'()").lower() for w in text.split()]
        words = [w for w in words if w]
        pos = sum(w in _POSITIVE for w in words)
        neg = sum(w in _NEGATIVE for w in words)
        score = (pos - neg) / max(len(words), 1)
        sentiment = "positive" if pos > neg else "negative" if neg > pos else "neutral"
        with telemetry.span("showcase.ml_analyze_text", {"words": len(words)}):
            frequencies: dict[str, int] = {}
            for w in words:
                frequencies[w] = frequencies.get(w, 0) + 1
        top = sorted(frequencies.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return {
            "text_length": len(text),
            "word_count": len(words),
            "unique_words": len(frequencies),
            "sentiment": sentiment,
            "sentiment_score": round(score, 4),
            "confidence": round(min(1.0, 0.5 + abs(pos - neg) / max(len(words), 1)), 4),
            "top_words": [{"word": w, "count": c} for w, c in top],
        }

    @tool(description="Binary data processing: checksum, length, reverse, upper, compress")
    def process_binary(self, data: Any, operation: str = "checksum") -> Any:
        """Process binary data (sent as a binary parameter, or as a string).

        Args:
            data: the bytes to process (strings are UTF-8 encoded).
            operation: checksum, length, reverse (returns bytes), upper (returns
                bytes) or compress (returns bytes).
        """
        self._count()
        if isinstance(data, str):
            raw = data.encode("utf-8")
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        elif isinstance(data, list) and all(isinstance(x, int) for x in data):
            raw = bytes(data)
        else:
            raise TypeError(f"data must be bytes or a string, got {type(data).__name__}")
        if operation == "checksum":
            return {
                "checksum": hashlib.sha256(raw).hexdigest(),
                "algorithm": "sha256",
                "md5": hashlib.md5(raw).hexdigest(),
                "size": len(raw),
                "success": True,
            }
        if operation == "length":
            return {"size": len(raw), "success": True}
        if operation == "reverse":
            return raw[::-1]
        if operation == "upper":
            return raw.upper()
        if operation == "compress":
            return zlib.compress(raw)
        raise ValueError(f"unknown operation '{operation}'; use checksum, length, reverse, upper or compress")

    # ------------------------------------------------------------ streaming

    @tool(description="Stream count items, optionally pausing delay seconds between them")
    def stream_data(self, count: int = 5, delay: float = 0.0) -> Iterator[dict[str, Any]]:
        self._count()
        for i in range(int(count)):
            if i and delay:
                time.sleep(float(delay))
            yield {
                "index": i,
                "total": int(count),
                "data": f"item_{i}",
                "progress": round((i + 1) / max(int(count), 1) * 100, 2),
                "timestamp": time.time(),
            }

    @tool(description="Streaming heartbeat: count pongs, interval seconds apart")
    async def ping_stream(self, count: int = 5, interval: float = 0.0) -> AsyncIterator[dict[str, Any]]:
        self._count()
        for i in range(int(count)):
            if i and interval:
                await asyncio.sleep(float(interval))
            yield {"ping": i, "message": "pong", "timestamp": time.time(), "pid": os.getpid()}

    @tool(description="Progress updates with elapsed time; the last update is the final chunk")
    def stream_progress(self, steps: int = 5, delay_ms: int = 0, stream: Any = None) -> None:
        """Report progress of a simulated job.

        Args:
            steps: number of progress updates.
            delay_ms: pause before each update after the first, in milliseconds.
        """
        self._count()
        steps = max(int(steps), 1)
        started = time.perf_counter()
        for step in range(1, steps + 1):
            if step > 1 and delay_ms:
                time.sleep(int(delay_ms) / 1000.0)
            update = {
                "step": step,
                "total": steps,
                "progress": round(step / steps * 100, 2),
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
                "status": "complete" if step == steps else "running",
            }
            if step == steps:
                stream.send(StreamChunk(update, is_final=True, metadata={"status": "complete"}))
            else:
                stream.send(update)

    # ------------------------------------------------------------ concurrency / bridge

    @tool(description="Run task_count small tasks concurrently and report their timings")
    async def concurrent_demo(self, task_count: int = 3, delay_ms: int = 10) -> dict[str, Any]:
        self._count()
        started = time.perf_counter()

        async def task(i: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            await asyncio.sleep(int(delay_ms) / 1000.0)
            return {"task": i, "result": i * i, "duration_ms": round((time.perf_counter() - t0) * 1000, 3)}

        results = await asyncio.gather(*(task(i) for i in range(int(task_count))))
        return {
            "task_count": int(task_count),
            "results": list(results),
            "total_ms": round((time.perf_counter() - started) * 1000, 3),
            "concurrent": True,
        }

    @tool(description="Call an Elixir tool through the bridge and return its result")
    def call_elixir_demo(self, tool_name: str, **params: Any) -> dict[str, Any]:
        self._count()
        ctx = self.session_context
        if ctx is None:
            raise RuntimeError("call_elixir_demo needs a session context")
        result = ctx.call_elixir_tool(tool_name, params)
        return {"tool": tool_name, "result": result, "session_id": ctx.session_id, "success": True}

    # ------------------------------------------------------------ process and errors

    @tool(description="Sleep ms milliseconds, then report the pid")
    def sleep(self, ms: int = 100) -> dict[str, Any]:
        self._count()
        time.sleep(max(float(ms), 0.0) / 1000.0)
        return {"slept_ms": ms, "pid": os.getpid()}

    @tool(description="Sleep duration_ms milliseconds as task task_number; report when it ended")
    def sleep_task(self, duration_ms: int = 100, task_number: int = 1) -> dict[str, Any]:
        self._count()
        started = time.time()
        time.sleep(max(0, duration_ms) / 1000)
        return {
            "task_number": task_number,
            "duration_ms": duration_ms,
            "started_at": started,
            "completed_at": time.time(),
            "pid": os.getpid(),
        }

    @tool(description="Values that need graceful serialization: dates, decimals, sets, model objects")
    def serialization_demo(self) -> dict[str, Any]:
        self._count()
        return {
            "datetime": datetime.datetime(2026, 12, 2, 10, 30, 0, tzinfo=datetime.timezone.utc),
            "date": datetime.date(2026, 12, 2),
            "decimal": decimal.Decimal("3.14159"),
            "set": {3, 1, 2},
            "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
            "model_dump": _WithModelDump(),
            "to_dict": _WithToDict(),
            "tolist": _WithToList(),
            "unserializable": _Unserializable(),
        }

    @tool(description="Report this worker's OS pid")
    def get_pid(self) -> dict[str, Any]:
        self._count()
        return {"pid": os.getpid()}

    @tool(description="Raise an exception of the requested kind (value, type, key, runtime, ...)")
    def error_demo(self, error_type: str = "generic", message: str | None = None) -> None:
        self._count()
        cls = _error_class(error_type)
        raise cls(message or f"{cls.__name__} raised by error_demo as requested")

    # -- zero copy: arrays and tables over shared memory ----------------------

    @tool(description="Sum, mean, dtype and shape of an array (a :dlpack zero-copy ref)")
    def array_stats(self, array: Any) -> dict[str, Any]:
        self._count()
        return {
            "dtype": array.dtype.name,
            "shape": list(array.shape),
            "sum": float(array.sum()),
            "mean": float(array.mean()) if array.size else None,
        }

    @tool(description="The array times factor, returned as a zero-copy ref made in place")
    def scale_array(self, array: Any, factor: float = 2.0) -> Any:
        self._count()
        out = zero_copy.empty(array.shape, array.dtype)
        out[...] = array * factor
        return zero_copy.export(out)

    @tool(description="Rows, column names and the sums of numeric columns of an Arrow table")
    def table_stats(self, table: Any) -> dict[str, Any]:
        self._count()
        import pyarrow.compute as pc

        sums = {
            name: pc.sum(table[name]).as_py()
            for name in table.column_names
            if table.schema.field(name).type.num_fields == 0 and _numeric(table.schema.field(name).type)
        }
        return {"num_rows": table.num_rows, "columns": table.column_names, "sums": sums}

    @tool(description="An Arrow table of rows (id, value = id / 2), returned as a zero-copy ref")
    def make_table(self, rows: int = 10) -> Any:
        self._count()
        import pyarrow as pa

        ids = pa.array(range(rows), type=pa.int64())
        values = pa.array([i / 2 for i in range(rows)], type=pa.float64())
        return zero_copy.export(pa.table({"id": ids, "value": values}))


class _WithModelDump:
    """Shaped like a pydantic model."""

    def model_dump(self) -> dict[str, Any]:
        return {"kind": "model", "fields": ["a", "b"]}


class _WithToDict:
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "to_dict", "value": 1}


class _WithToList:
    """Shaped like an array."""

    def tolist(self) -> list[int]:
        return [1, 2, 3]


class _Unserializable:
    """Nothing JSON can hold: arrives as the unserializable marker."""

    __slots__ = ()


def _numeric(arrow_type: Any) -> bool:
    import pyarrow.types as pat

    return pat.is_integer(arrow_type) or pat.is_floating(arrow_type)
