"""The worker's entry point: ``python -m snakepit_bridge.server``.

    python -m snakepit_bridge.server --adapter module.Class --address ADDR
        [--worker-id ID] [--snakepit-run-id RID] [--elixir-address ADDR]
        [--max-workers N] [--mode process|threaded] [--log-level LEVEL]

Snakepit starts every worker this way (see ``snakepit_bridge._internal.command_line``
for the handshake it prints and how it stops). An adapter of your own can
run it from a script with :func:`main` or :func:`run`.
"""

from ._internal.adapter_loading import DEFAULT_ADAPTER, load_adapter_class
from ._internal.command_line import ERROR_PREFIX, READY_PREFIX, build_parser, main, run, settle_threads
from ._internal.startup import StartupError
from ._internal.worker import Worker

__all__ = [
    "DEFAULT_ADAPTER",
    "ERROR_PREFIX",
    "READY_PREFIX",
    "StartupError",
    "Worker",
    "build_parser",
    "load_adapter_class",
    "main",
    "run",
    "settle_threads",
]

if __name__ == "__main__":
    run()
