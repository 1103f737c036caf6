"""``python -m snakepit_bridge`` is the same as ``python -m snakepit_bridge.server``."""

from ._internal.command_line import run

run()
