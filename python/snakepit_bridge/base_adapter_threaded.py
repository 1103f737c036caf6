"""Adapters that may serve several calls at once from different threads.

A worker in threaded mode (``--mode threaded`` or ``--max-workers N`` with
N > 1) runs sync tools concurrently in its thread pool and refuses adapters
that do not declare ``__thread_safe__ = True``. :class:`ThreadSafeAdapter`
declares it and offers the usual tools for keeping shared state safe:

* :meth:`ThreadSafeAdapter.acquire_lock` - a context manager around the
  adapter's re-entrant lock, for mutating shared state;
* :meth:`~ThreadSafeAdapter.get_thread_local` /
  :meth:`~ThreadSafeAdapter.set_thread_local` - per-thread storage (caches,
  scratch buffers);
* :func:`thread_safe_method` - marks a method as safe to run concurrently and
  counts its calls (see :meth:`~ThreadSafeAdapter.get_thread_stats`).
"""

from __future__ import annotations

import functools
import inspect
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from .base_adapter import BaseAdapter, tool

__all__ = ["ThreadSafeAdapter", "thread_safe_method", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

THREAD_SAFE_ATTR = "__snakepit_thread_safe__"


class _MethodStats:
    __slots__ = ("calls", "active", "max_active")

    def __init__(self) -> None:
        self.calls = 0
        self.active = 0
        self.max_active = 0


class ThreadSafeAdapter(BaseAdapter):
    """Base class for adapters that can run in threaded workers."""

    __thread_safe__ = True

    def __init__(self) -> None:
        super().__init__()
        self._ensure_thread_state()

    def _ensure_thread_state(self) -> None:
        # Subclasses that forget super().__init__() still get working state.
        if "_snakepit_lock" not in self.__dict__:
            self.__dict__["_snakepit_lock"] = threading.RLock()
            self.__dict__["_snakepit_local"] = threading.local()
            self.__dict__["_snakepit_stats"] = {}
            self.__dict__["_snakepit_stats_lock"] = threading.Lock()

    # ------------------------------------------------------------ locking

    @contextmanager
    def acquire_lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the adapter's re-entrant lock for the ``with`` block.

        With ``timeout`` (seconds), raises ``TimeoutError`` if the lock cannot
        be taken in time.
        """
        self._ensure_thread_state()
        lock: threading.RLock = self.__dict__["_snakepit_lock"]
        acquired = lock.acquire(timeout=-1 if timeout is None else timeout)
        if not acquired:
            raise TimeoutError(f"could not acquire the adapter lock within {timeout}s")
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------ thread-local state

    def get_thread_local(self, key: str, default: Any = None) -> Any:
        """This thread's value for ``key`` (``default`` when unset)."""
        self._ensure_thread_state()
        store = getattr(self.__dict__["_snakepit_local"], "values", None)
        if store is None:
            return default
        return store.get(key, default)

    def set_thread_local(self, key: str, value: Any) -> None:
        """Set this thread's value for ``key``."""
        self._ensure_thread_state()
        local = self.__dict__["_snakepit_local"]
        store = getattr(local, "values", None)
        if store is None:
            store = local.values = {}
        store[key] = value

    def clear_thread_local(self, key: str | None = None) -> None:
        """Forget one key (or all keys) for this thread."""
        self._ensure_thread_state()
        store = getattr(self.__dict__["_snakepit_local"], "values", None)
        if store is None:
            return
        if key is None:
            store.clear()
        else:
            store.pop(key, None)

    # ------------------------------------------------------------ stats

    def _record(self, name: str, delta: int) -> None:
        self._ensure_thread_state()
        with self.__dict__["_snakepit_stats_lock"]:
            stats = self.__dict__["_snakepit_stats"].setdefault(name, _MethodStats())
            if delta > 0:
                stats.calls += 1
            stats.active += delta
            stats.max_active = max(stats.max_active, stats.active)

    def get_thread_stats(self) -> dict[str, dict[str, int]]:
        """Per-method call counts and peak concurrency of thread_safe_method calls."""
        self._ensure_thread_state()
        with self.__dict__["_snakepit_stats_lock"]:
            return {
                name: {"calls": s.calls, "active": s.active, "max_active": s.max_active}
                for name, s in self.__dict__["_snakepit_stats"].items()
            }


def thread_safe_method(func: F) -> F:
    """Mark a method as safe to call from several threads at once.

    The method runs unchanged (no lock is taken: use ``self.acquire_lock()``
    around shared mutable state); on a :class:`ThreadSafeAdapter` its calls are
    counted. Works above or below ``@tool``, on sync, async and generator
    methods.
    """
    name = func.__name__

    def record(self: Any, delta: int) -> None:
        if isinstance(self, ThreadSafeAdapter):
            self._record(name, delta)

    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(func):

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            record(self, 1)
            try:
                async for item in func(self, *args, **kwargs):
                    yield item
            finally:
                record(self, -1)

    elif inspect.iscoroutinefunction(func):

        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            record(self, 1)
            try:
                return await func(self, *args, **kwargs)
            finally:
                record(self, -1)

    elif inspect.isgeneratorfunction(func):

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            record(self, 1)
            try:
                return (yield from func(self, *args, **kwargs))
            finally:
                record(self, -1)

    else:

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            record(self, 1)
            try:
                return func(self, *args, **kwargs)
            finally:
                record(self, -1)

    functools.update_wrapper(wrapper, func)
    setattr(wrapper, THREAD_SAFE_ATTR, True)
    return wrapper  # type: ignore[return-value]
