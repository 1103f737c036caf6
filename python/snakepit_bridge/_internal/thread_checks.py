"""Runtime thread-safety checks for threaded workers.

With the pool's ``thread_safety_checks: true`` (``SNAKEPIT_THREAD_SAFETY_CHECKS=1``
in the worker's environment), a threaded worker watches its sync tools: when
a tool that is not marked ``@thread_safe_method`` runs in two threads at
once, it logs a warning (once per tool) and emits the telemetry event
``thread_safety.concurrent_call``. Nothing is blocked: the check shows which
tools to review, mark, or guard with ``acquire_lock()``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
from typing import Any, Callable

from .. import telemetry
from ..base_adapter_threaded import THREAD_SAFE_ATTR

__all__ = ["ConcurrencyCheck", "enabled_from_env"]

log = logging.getLogger("snakepit_bridge.thread_checks")

ENV_VAR = "SNAKEPIT_THREAD_SAFETY_CHECKS"


def enabled_from_env() -> bool:
    return os.environ.get(ENV_VAR, "") in ("1", "true", "yes")


def _marked_safe(func: Any) -> bool:
    target = getattr(func, "__func__", func)
    while target is not None:
        if getattr(target, THREAD_SAFE_ATTR, False):
            return True
        target = getattr(target, "__wrapped__", None)
    return False


class ConcurrencyCheck:
    """Counts running calls per tool and reports unmarked overlaps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self.warned: set[str] = set()

    def wrap(self, name: str, func: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
        if _marked_safe(func) or inspect.iscoroutinefunction(func):
            return fn

        @functools.wraps(fn)
        def checked() -> Any:
            with self._lock:
                running = self._active.get(name, 0)
                self._active[name] = running + 1
                first = running > 0 and name not in self.warned
                if first:
                    self.warned.add(name)
            if first:
                self._report(name, running + 1)
            try:
                return fn()
            finally:
                with self._lock:
                    self._active[name] -= 1

        return checked

    def _report(self, name: str, concurrent: int) -> None:
        log.warning(
            "thread safety check: tool '%s' runs in %d threads at once but is not marked "
            "@thread_safe_method; review its shared state (use acquire_lock()) and mark it",
            name,
            concurrent,
        )
        telemetry.emit(("thread_safety", "concurrent_call"), {"threads": concurrent}, {"tool": name})
