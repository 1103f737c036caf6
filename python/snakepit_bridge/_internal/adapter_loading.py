"""Finding, importing and instantiating the adapter a worker serves.

``--adapter`` names it as ``module.Class``, ``module:Class``, or a module
that holds exactly one adapter class (a :class:`~snakepit_bridge.BaseAdapter`
subclass, or a class with ``@tool`` methods). Every failure is a
:class:`~snakepit_bridge._internal.startup.StartupError` with a one-line cause.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..base_adapter import BaseAdapter
from ..tools import TOOL_ATTR, prepare_tools
from .startup import StartupError, describe

__all__ = ["DEFAULT_ADAPTER", "load_adapter_class", "is_thread_safe", "instantiate_adapter", "preload"]

DEFAULT_ADAPTER = "snakepit_bridge.adapters.showcase.ShowcaseAdapter"


def _module_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when ``exc`` says ``module_name`` itself (or a parent) is missing."""
    missing = exc.name or ""
    return bool(missing) and (module_name == missing or module_name.startswith(missing + "."))


def _pick_adapter_class(module: Any) -> type:
    candidates = []
    for value in vars(module).values():
        if not inspect.isclass(value) or value.__module__ != module.__name__:
            continue
        if issubclass(value, BaseAdapter) or any(
            hasattr(getattr(value, n, None), TOOL_ATTR) for n in dir(value) if not n.startswith("__")
        ):
            candidates.append(value)
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(sorted(c.__name__ for c in candidates)) or "none"
    raise StartupError(
        f"adapter module '{module.__name__}' does not name a single adapter class "
        f"(found: {names}); pass --adapter {module.__name__}.ClassName"
    )


def load_adapter_class(spec: str) -> type:
    """Resolve ``module.Class`` (or ``module:Class``, or a module with one adapter)."""
    spec = spec.strip()
    if not spec:
        raise StartupError("no adapter given (--adapter module.Class)")
    if ":" in spec:
        module_name, _, attr_path = spec.partition(":")
    elif "." in spec:
        module_name, _, attr_path = spec.rpartition(".")
    else:
        module_name, attr_path = spec, ""

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if attr_path and ":" not in spec and _module_missing(exc, module_name):
            # Maybe the whole spec is a module holding one adapter class.
            try:
                whole = importlib.import_module(spec)
            except ModuleNotFoundError:
                raise StartupError(f"cannot import adapter module '{module_name}': {exc}", exc) from exc
            except Exception as inner:  # noqa: BLE001
                raise StartupError(f"cannot import adapter module '{spec}': {describe(inner)}", inner) from inner
            return _pick_adapter_class(whole)
        raise StartupError(f"cannot import adapter module '{module_name}': {exc}", exc) from exc
    except Exception as exc:  # noqa: BLE001 - syntax errors, failing module code, ...
        raise StartupError(f"cannot import adapter module '{module_name}': {describe(exc)}", exc) from exc

    if not attr_path:
        return _pick_adapter_class(module)
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            if ":" not in spec:
                try:  # a submodule that its package does not import itself
                    return _pick_adapter_class(importlib.import_module(spec))
                except ImportError:
                    pass
            raise StartupError(
                f"adapter module '{module_name}' has no attribute '{attr_path}'", exc
            ) from exc
    if inspect.ismodule(target):
        return _pick_adapter_class(target)
    if not inspect.isclass(target):
        raise StartupError(f"adapter '{spec}' is not a class (got {type(target).__name__})")
    return target


def is_thread_safe(cls: type) -> bool:
    return bool(getattr(cls, "__thread_safe__", False))


def instantiate_adapter(spec: str, *, threaded: bool, threaded_by: str = "") -> Any:
    """Load ``spec`` and make the instance the worker serves. A threaded
    worker (``threaded_by`` says which flags made it one) runs calls at
    once, so its adapter must declare itself thread-safe."""
    adapter_cls = load_adapter_class(spec)
    if threaded and not is_thread_safe(adapter_cls):
        raise StartupError(
            f"adapter '{spec}' is not thread-safe, but this worker runs in threaded mode ({threaded_by}); "
            "declare __thread_safe__ = True (e.g. subclass ThreadSafeAdapter) or use the process profile"
        )
    try:
        return adapter_cls()
    except Exception as exc:  # noqa: BLE001
        raise StartupError(f"cannot instantiate adapter '{spec}': {describe(exc)}", exc) from exc


def preload(spec: str) -> None:
    """Import the adapter ``spec`` and work out its tools ahead of any
    instance: what a fork server does once, before it forks, for the
    adapter most of its workers serve."""
    prepare_tools(load_adapter_class(spec))
