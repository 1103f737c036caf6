"""thread_safety_checks: a threaded worker warns, once per tool, when a tool
not marked @thread_safe_method runs in two threads at once."""

from __future__ import annotations

import asyncio
import logging
import threading

from helpers import request, result_of, run, running_worker

from snakepit_bridge import ThreadSafeAdapter, thread_safe_method, tool


class Overlapping(ThreadSafeAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=10)

    @tool
    def plain(self) -> int:
        self.barrier.wait()  # both calls are inside at once
        return 1

    @tool
    @thread_safe_method
    def marked(self) -> int:
        self.barrier.wait()
        return 2


def overlap(stub, name):
    async def both():
        return await asyncio.gather(*(stub.ExecuteTool(request(name)) for _ in range(2)))

    return both()


def test_unmarked_overlap_warns_once_marked_does_not(sock_dir, monkeypatch, caplog):
    monkeypatch.setenv("SNAKEPIT_THREAD_SAFETY_CHECKS", "1")
    adapter = Overlapping()

    async def go():
        async with running_worker(adapter, sock_dir, max_workers=4) as (worker, stub):
            with caplog.at_level(logging.WARNING, logger="snakepit_bridge.thread_checks"):
                for reply in await overlap(stub, "marked"):
                    assert result_of(reply) == 2
                assert worker.runner.thread_checks.warned == set()
                for _ in range(2):
                    adapter.barrier.reset()
                    for reply in await overlap(stub, "plain"):
                        assert result_of(reply) == 1
            assert worker.runner.thread_checks.warned == {"plain"}
            warnings = [r for r in caplog.records if "'plain' runs in 2 threads" in r.getMessage()]
            assert len(warnings) == 1

    run(go())


def test_checks_are_off_unless_asked(sock_dir, monkeypatch):
    monkeypatch.delenv("SNAKEPIT_THREAD_SAFETY_CHECKS", raising=False)

    async def go():
        async with running_worker(Overlapping(), sock_dir, max_workers=4) as (worker, _stub):
            assert worker.runner.thread_checks is None

    run(go())
