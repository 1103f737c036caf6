"""Adapters for the benchmarks in bench/ (put on the workers' path by them)."""

from __future__ import annotations

import os
import time
from typing import Any

from snakepit_bridge import BaseAdapter, ThreadSafeAdapter, tool, zero_copy


class ThreadedPing(ThreadSafeAdapter):
    """The showcase's ping, declared thread-safe for thread-profile pools."""

    @tool(description="Health check: answers pong")
    def ping(self, message: str = "pong", **_extra: Any) -> dict[str, Any]:
        return {"status": "pong", "message": message, "timestamp": time.time(), "pid": os.getpid()}


class ZeroCopyBench(BaseAdapter):
    """Payloads both ways, as bytes in the message and as zero-copy refs
    (bench/zero_copy.exs). Each tool touches the payload's last byte, so a
    mapping is really there, and produces its output with one memset."""

    @tool(description="Bytes in binary_parameters: their length")
    def take_bytes(self, data: bytes) -> dict[str, Any]:
        return {"n": len(data), "last": data[-1]}

    @tool(description="A :dlpack ref: its length")
    def take_array(self, array: Any) -> dict[str, Any]:
        return {"n": int(array.nbytes), "last": int(array[-1])}

    @tool(description="mb MiB of bytes as the binary result")
    def give_bytes(self, mb: int) -> bytes:
        return b"\x07" * (mb << 20)

    @tool(description="mb MiB in a region made in place, as a ref; fill_us is the memset")
    def give_array(self, mb: int) -> dict[str, Any]:
        out = zero_copy.empty(mb << 20, "uint8")
        started = time.perf_counter_ns()
        out.fill(7)
        fill_us = (time.perf_counter_ns() - started) // 1000
        return {"array": zero_copy.export(out), "fill_us": fill_us}


class BatchBench(BaseAdapter):
    """bench/batching.exs: the same work batched and not. A call of the
    "cost" tools costs a fixed 2 ms of Python time whatever it carries (a
    model's forward pass, say); the trivial tools cost nothing but the
    call."""

    @tool(batch=True, max_batch_size=64, max_batch_delay_ms=2)
    def cost_batched(self, batch: list[dict[str, Any]]) -> list[Any]:
        time.sleep(0.002)
        return [item.get("i") for item in batch]

    @tool
    def cost_single(self, i: int = 0) -> int:
        time.sleep(0.002)
        return i

    @tool(batch=True, max_batch_size=64, max_batch_delay_ms=1)
    def trivial_batched(self, batch: list[dict[str, Any]]) -> list[Any]:
        return [item.get("i") for item in batch]

    @tool
    def trivial(self, i: int = 0) -> int:
        return i
