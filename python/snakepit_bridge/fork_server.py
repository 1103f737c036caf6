"""The fork server's entry point: ``python -m snakepit_bridge.fork_server``.

Snakepit starts one per interpreter, environment and working directory; it
imports the bridge once and forks ready workers on request (see
``snakepit_bridge._internal.fork_server`` for the protocol).
"""

import os
import sys

from ._internal.fork_server import main

if __name__ == "__main__":
    exit_code = main()
    sys.stderr.flush()
    os._exit(exit_code)  # at once: no interpreter teardown to wait for
