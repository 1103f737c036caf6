"""Documented import paths of the adapter API."""

from __future__ import annotations


def test_top_level_exports():
    import snakepit_bridge as sb

    for name in ("BaseAdapter", "tool", "ThreadSafeAdapter", "thread_safe_method", "SessionContext",
                 "StreamChunk", "telemetry"):
        assert hasattr(sb, name), name
    assert callable(sb.telemetry.emit) and callable(sb.telemetry.span)


def test_module_aliases():
    import snakepit_bridge as sb
    from snakepit_bridge.adapters.base import BaseAdapter as B2
    from snakepit_bridge.adapters.showcase import ShowcaseAdapter as S1
    from snakepit_bridge.adapters.showcase.showcase_adapter import ShowcaseAdapter as S2
    from snakepit_bridge.base_adapter import BaseAdapter, tool
    from snakepit_bridge.base_adapter_threaded import ThreadSafeAdapter, thread_safe_method
    from snakepit_bridge.session_context import SessionContext
    from snakepit_bridge.telemetry import emit, span

    assert BaseAdapter is sb.BaseAdapter is B2
    assert tool is sb.tool
    assert ThreadSafeAdapter is sb.ThreadSafeAdapter and thread_safe_method is sb.thread_safe_method
    assert SessionContext is sb.SessionContext
    assert S1 is S2
    assert emit is sb.telemetry.emit and span is sb.telemetry.span


def test_server_import_does_not_pull_numpy():
    import subprocess
    import sys

    from helpers import worker_env

    code = "import sys, snakepit_bridge.server; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=worker_env(), check=True)
    assert out.stdout.strip() == "False"
