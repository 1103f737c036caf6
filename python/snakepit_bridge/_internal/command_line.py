"""Worker entry point: ``python -m snakepit_bridge.server``.

    python -m snakepit_bridge.server --adapter module.Class --address ADDR
        [--worker-id ID] [--snakepit-run-id RID] [--elixir-address ADDR]
        [--instance-name N] [--instance-token T] [--max-workers N]
        [--mode process|threaded] [--log-level LEVEL] [--lane PATH]

``ADDR`` is a gRPC address: ``unix:/abs/path.sock`` or ``HOST:PORT`` (port 0
picks a free one). Flags this version does not know are ignored with a warning
on stderr.

Handshake on stdout (the only lines this module writes there):

* ``SNAKEPIT_READY <bound-address>`` once the server is bound, the adapter is
  imported, instantiated and initialized, and the server is accepting calls;
  with ``--lane PATH`` the line ends with `` lane=PATH`` once the call lane
  (:mod:`snakepit_bridge._internal.lane`) listens there too.
* On a startup failure, ``SNAKEPIT_STARTUP_ERROR <one-line message>`` goes to
  *stderr* followed by the traceback, and the process exits with status 2.

SIGTERM/SIGINT stop the server (2 s grace for in-flight calls), run the
adapter's ``cleanup()`` once and exit 0.

This module is the process: its arguments, limits, logging, signals and
handshake. Which adapter it serves is
:mod:`~snakepit_bridge._internal.adapter_loading`'s business; the server,
lane and bridge link are :class:`~snakepit_bridge._internal.worker.Worker`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Sequence

from .. import serialization, telemetry
from ..heartbeat import EXIT_CODE as HEARTBEAT_EXIT_CODE
from ..heartbeat import HeartbeatConfig
from . import auth, log_forward
from .adapter_loading import DEFAULT_ADAPTER, instantiate_adapter
from .elixir_bridge import refresh_limits
from .startup import StartupError, describe
from .worker import Worker

log = logging.getLogger("snakepit_bridge.server")

__all__ = [
    "READY_PREFIX",
    "ERROR_PREFIX",
    "build_parser",
    "parse_args",
    "threaded_mode",
    "main",
    "run",
    "settle_threads",
]

READY_PREFIX = "SNAKEPIT_READY"
ERROR_PREFIX = "SNAKEPIT_STARTUP_ERROR"


# Options whose default comes from the environment: (variable, fallback).
_ENV_DEFAULTS = {
    "instance_name": ("SNAKEPIT_INSTANCE_NAME", ""),
    "instance_token": ("SNAKEPIT_INSTANCE_TOKEN", ""),
    "log_level": ("SNAKEPIT_LOG_LEVEL", "warning"),
}


def _new_parser() -> argparse.ArgumentParser:
    """The parser, its environment defaults left as None (see parse_args)."""
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_bridge.server",
        description="Snakepit Python worker: serves an adapter's tools over gRPC.",
        allow_abbrev=False,
    )
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help="adapter class, module.Class (default: %(default)s)")
    parser.add_argument("--address", default=None, help="unix:/abs/path.sock or HOST:PORT (port 0 = any)")
    parser.add_argument("--port", type=int, default=None, help="shorthand for --address 127.0.0.1:PORT")
    parser.add_argument("--worker-id", default="", help="id reported in Ping and telemetry")
    parser.add_argument(
        "--snakepit-run-id", "--run-id", dest="run_id", default="", help="BEAM run id (for orphan cleanup)"
    )
    parser.add_argument("--elixir-address", default="", help="address of the ElixirBridge server")
    parser.add_argument("--instance-name", default=None)
    parser.add_argument("--instance-token", default=None)
    parser.add_argument("--max-workers", type=int, default=None, help="thread pool size; >1 selects threaded mode")
    parser.add_argument("--mode", choices=("process", "threaded"), default=None, help="worker mode")
    parser.add_argument("--lane", default="", help="also serve calls on the call lane (a Unix socket) at this path")
    parser.add_argument("--log-level", default=None, help="stderr log level (debug, info, warning, error)")
    return parser


def _env_defaults() -> dict[str, str]:
    return {dest: os.environ.get(var, fallback) for dest, (var, fallback) in _ENV_DEFAULTS.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = _new_parser()
    parser.set_defaults(**_env_defaults())
    return parser


# Built at import, so a fork server builds it once for all the workers it
# forks (building it costs a worker about a millisecond); hence no defaults
# from the environment in it: a forked worker's environment is its own.
_PARSER = _new_parser()


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    args, unknown = _PARSER.parse_known_args(argv)
    for dest, value in _env_defaults().items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    if args.address is None:
        args.address = f"127.0.0.1:{args.port}" if args.port is not None else "127.0.0.1:0"
    return args, unknown


def threaded_mode(args: argparse.Namespace) -> bool:
    if args.mode == "threaded":
        return True
    if args.mode == "process":
        return False
    return bool(args.max_workers and args.max_workers > 1)


def _configure_logging(level_name: str, worker_id: str) -> None:
    # Records reach Elixir's Logger with the worker's id as metadata.
    del worker_id
    log_forward.configure(level_name)


def _announce_ready(address: str, lane: str = "") -> None:
    ready_file = os.environ.get("SNAKEPIT_READY_FILE")
    if ready_file:
        tmp = f"{ready_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(address + "\n")
        os.replace(tmp, ready_file)
    sys.stdout.write(f"{READY_PREFIX} {address}{f' lane={lane}' if lane else ''}\n")
    sys.stdout.flush()


def _report_startup_error(err: StartupError) -> None:
    sys.stderr.write(f"{ERROR_PREFIX} {err.message}\n")
    cause = err.cause if err.cause is not None else err
    sys.stderr.write("".join(traceback.format_exception(type(cause), cause, cause.__traceback__)))
    sys.stderr.flush()


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_requested.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass

    threaded = threaded_mode(args)
    threaded_by = f"--max-workers {args.max_workers or '?'}{', --mode threaded' if args.mode == 'threaded' else ''}"
    adapter = instantiate_adapter(args.adapter, threaded=threaded, threaded_by=threaded_by)

    telemetry.hub.worker_id = args.worker_id
    worker = Worker(
        adapter,
        args.address,
        worker_id=args.worker_id,
        max_workers=args.max_workers,
        elixir_address=args.elixir_address,
        heartbeat=HeartbeatConfig.from_env(),
        lane_path=args.lane,
        threaded=threaded,
    )
    try:
        worker.bind()
        # A stop signal while the adapter initializes ends startup quietly.
        starting = asyncio.ensure_future(worker.start())
        stopping = asyncio.ensure_future(stop_requested.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            log.info("stop requested during startup")
            await worker.stop(grace=0)
            return 0
        address = starting.result()
    except BaseException:
        await worker.stop(grace=0)
        raise

    log.info("worker %s serving %s on %s (%s mode)", args.worker_id, args.adapter, address,
             "threaded" if threaded else "process")
    _announce_ready(address, worker.lane.path if worker.lane is not None else "")

    # Dependent mode: exit when Elixir stops sending heartbeats.
    exit_code = 0
    watchdog_task: asyncio.Future[None] | None = None
    if worker.watchdog is not None and worker.watchdog.config.watching:

        def elixir_silent(silence_s: float) -> None:
            nonlocal exit_code
            exit_code = HEARTBEAT_EXIT_CODE
            log.error("no heartbeat from Elixir for %.1fs (dependent mode); exiting", silence_s)
            stop_requested.set()

        worker.watchdog.start()
        watchdog_task = asyncio.ensure_future(worker.watchdog.watch(elixir_silent))

    await stop_requested.wait()
    if watchdog_task is not None:
        watchdog_task.cancel()
    log.info("shutting down")
    try:
        await worker.stop()
    except Exception:  # noqa: BLE001 - past READY nothing is a startup error
        log.exception("error during shutdown")
        return 1
    return exit_code


def _lingering_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]


def settle_threads(timeout: float = 0.5) -> bool:
    """Flush stdout/stderr and give non-daemon threads still running (e.g. a
    tool sleeping for minutes) up to ``timeout`` seconds to end. True when
    none is left, i.e. a normal interpreter exit would not wait on any."""
    sys.stdout.flush()
    sys.stderr.flush()
    deadline = time.monotonic() + timeout
    for thread in _lingering_threads():
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return not _lingering_threads()


def apply_memory_limit() -> int | None:
    """Cap the process's data segment (heap and anonymous mappings) at
    SNAKEPIT_MEMORY_LIMIT_MB, so that a tool allocating past it gets a
    MemoryError instead of the machine's OOM killer. RLIMIT_DATA rather than
    RLIMIT_AS: address space reserved but unused (thread stacks, malloc
    arenas: ~650 MB for an idle worker against ~90 MB of data) does not
    count. Returns the limit in MB, or None when there is none."""
    value = os.environ.get("SNAKEPIT_MEMORY_LIMIT_MB", "").strip()
    if not value:
        return None
    try:
        mb = int(value)
    except ValueError:
        raise StartupError(f"SNAKEPIT_MEMORY_LIMIT_MB must be a whole number of MB, got {value!r}") from None
    import resource

    limit = mb * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return mb


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = parse_args(argv)
    _configure_logging(args.log_level, args.worker_id)
    refresh_limits()
    # Nesting and integer limits, and the interpreter settings they need,
    # before any adapter code runs (and whatever the fork server had).
    serialization.apply_limits()
    # Out of the environment before any adapter code runs.
    auth.load_from_env()
    if unknown:
        sys.stderr.write(f"snakepit_bridge: warning: ignoring unknown arguments: {' '.join(unknown)}\n")
        sys.stderr.flush()
    try:
        apply_memory_limit()
        return asyncio.run(serve(args))
    except StartupError as err:
        _report_startup_error(err)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything unexpected before READY is a startup error
        _report_startup_error(StartupError(f"worker failed: {describe(exc)}", exc))
        return 2


def run() -> None:
    """Console-script entry: exit with main()'s status, without waiting for
    tool threads that are still running."""
    code = main()
    if not settle_threads():
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
