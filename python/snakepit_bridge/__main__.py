"""``python -m snakepit_bridge`` is the same as ``python -m snakepit_bridge.server``."""

from ._internal.server import run

run()
