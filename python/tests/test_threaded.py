"""ThreadSafeAdapter, thread_safe_method and the threaded worker mode."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers import request, result_of, run, running_worker
from sample_adapters import Threaded

from snakepit_bridge import BaseAdapter, ThreadSafeAdapter, thread_safe_method, tool
from snakepit_bridge._internal.adapter_loading import is_thread_safe, load_adapter_class
from snakepit_bridge._internal.command_line import parse_args, threaded_mode
from snakepit_bridge._internal.startup import StartupError


def test_threaded_worker_runs_calls_concurrently(sock_dir):
    adapter = Threaded()

    async def go():
        async with running_worker(adapter, sock_dir, max_workers=4) as (_, stub):
            # Each call waits at a 2-party barrier: both succeed only if they
            # are inside the tool at the same time.
            a, b = await asyncio.gather(
                stub.ExecuteTool(request("rendezvous")), stub.ExecuteTool(request("rendezvous"))
            )
            names = {result_of(a), result_of(b)}
            assert len(names) == 2
            stats = adapter.get_thread_stats()["rendezvous"]
            assert stats["calls"] == 2 and stats["max_active"] == 2 and stats["active"] == 0

    run(go())


def test_acquire_lock_keeps_updates_under_contention(sock_dir):
    # Four calls at once run a read-yield-write increment 2000 times each,
    # each under the lock: no update is lost.
    adapter = Threaded()

    async def go():
        async with running_worker(adapter, sock_dir, max_workers=4) as (_, stub):
            replies = await asyncio.gather(
                *(stub.ExecuteTool(request("bump", {"times": 2000, "locked": True})) for _ in range(4))
            )
            assert all(r.success for r in replies)
            assert adapter.counter == 8000

    run(go())


@pytest.mark.parametrize("locked", [True, False])
def test_acquire_lock_excludes_the_other_call(sock_dir, locked):
    # Two calls read the counter, then try to meet inside the section before
    # writing. Deterministic either way: without the lock (the control) they
    # always meet and one update is lost; with it they never meet, because
    # the second call cannot enter while the first waits there.
    adapter = Threaded()

    async def go():
        async with running_worker(adapter, sock_dir, max_workers=4) as (_, stub):
            replies = await asyncio.gather(
                # Unlocked, they meet at once; a long limit only keeps a
                # loaded machine from parting them.
                *(
                    stub.ExecuteTool(request("bump_pair", {"locked": locked, "meet_s": 0.5 if locked else 15}))
                    for _ in range(2)
                )
            )
            assert all(r.success for r in replies)
            met = [result_of(r) for r in replies]
            if locked:
                assert met == [False, False] and adapter.counter == 2
            else:
                assert met == [True, True] and adapter.counter == 1

    run(go())


def test_thread_local_storage_is_per_thread():
    adapter = Threaded()
    adapter.set_thread_local("k", "main")
    seen = {}

    def other():
        seen["before"] = adapter.get_thread_local("k", "unset")
        adapter.set_thread_local("k", "other")
        seen["after"] = adapter.get_thread_local("k")

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == {"before": "unset", "after": "other"}
    assert adapter.get_thread_local("k") == "main"
    adapter.clear_thread_local("k")
    assert adapter.get_thread_local("k", 0) == 0


def test_acquire_lock_timeout_and_reentrancy():
    adapter = Threaded()
    with adapter.acquire_lock():
        with adapter.acquire_lock():  # re-entrant
            pass
        result = {}

        def contender():
            try:
                with adapter.acquire_lock(timeout=0.05):
                    result["got"] = True
            except TimeoutError:
                result["timeout"] = True

        t = threading.Thread(target=contender)
        t.start()
        t.join()
    assert result == {"timeout": True}


def test_thread_safe_method_preserves_tool_metadata_in_either_order():
    class A(ThreadSafeAdapter):
        @thread_safe_method
        @tool(description="below")
        def below(self, x: int) -> int:
            return x

        @tool(description="above")
        @thread_safe_method
        def above(self, x: int) -> int:
            return x

        @tool
        @thread_safe_method
        def gen(self, n: int):
            yield from range(n)

        @tool
        @thread_safe_method
        async def coro(self) -> int:
            return 1

    tools = A().get_tools()
    assert tools["below"].description == "below" and tools["above"].description == "above"
    assert [p.name for p in tools["above"].params] == ["x"]
    assert tools["gen"].is_generator and tools["gen"].supports_streaming
    assert tools["coro"].is_coroutine
    a = A()
    assert list(a.gen(3)) == [0, 1, 2]
    assert asyncio.run(a.coro()) == 1
    assert a.get_thread_stats()["gen"]["calls"] == 1


def test_thread_safety_declarations():
    assert is_thread_safe(ThreadSafeAdapter)
    assert is_thread_safe(Threaded)
    assert not is_thread_safe(BaseAdapter)

    class Declared(BaseAdapter):
        __thread_safe__ = True

    assert is_thread_safe(Declared)


def test_threaded_mode_selection():
    assert not threaded_mode(parse_args(["--address", "unix:/x"])[0])
    assert not threaded_mode(parse_args(["--max-workers", "1"])[0])
    assert threaded_mode(parse_args(["--max-workers", "8"])[0])
    assert threaded_mode(parse_args(["--mode", "threaded"])[0])
    assert not threaded_mode(parse_args(["--mode", "process", "--max-workers", "8"])[0])


def test_subclass_forgetting_super_init_still_works():
    class Sloppy(ThreadSafeAdapter):
        def __init__(self):
            pass

    s = Sloppy()
    s.set_thread_local("a", 1)
    with s.acquire_lock():
        assert s.get_thread_local("a") == 1


def test_load_adapter_class_forms():
    assert load_adapter_class("sample_adapters.Threaded") is Threaded
    assert load_adapter_class("sample_adapters:Threaded") is Threaded
    with pytest.raises(StartupError, match="does not name a single adapter class"):
        load_adapter_class("sample_adapters")
    with pytest.raises(StartupError, match="cannot import adapter module 'nope_mod'"):
        load_adapter_class("nope_mod.X")


def test_module_with_a_single_adapter_class():
    from snakepit_bridge.adapters.showcase import ShowcaseAdapter

    assert load_adapter_class("snakepit_bridge.adapters.showcase.showcase_adapter") is ShowcaseAdapter
    assert load_adapter_class("snakepit_bridge.adapters.showcase.ShowcaseAdapter") is ShowcaseAdapter
