"""``python -m snakepit_bridge`` is the same as ``python -m snakepit_bridge.server``."""

from .server import run

run()
