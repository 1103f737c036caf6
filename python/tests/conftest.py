from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
for path in (str(PYTHON_DIR), str(TESTS_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

from snakepit_bridge import telemetry  # noqa: E402
from snakepit_bridge._internal.elixir_bridge import set_default_client  # noqa: E402


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="spk", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _reset_globals() -> Iterator[None]:
    yield
    telemetry.hub.reset()
    telemetry.hub.stop_buffering()
    set_default_client(None)
