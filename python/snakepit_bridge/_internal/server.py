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
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable, Sequence

import grpc

from .. import serialization, telemetry
from ..generated import snakepit_bridge_pb2_grpc as pb_grpc
from ..heartbeat import EXIT_CODE as HEARTBEAT_EXIT_CODE
from ..heartbeat import HeartbeatConfig, HeartbeatWatchdog
from . import auth, log_forward
from .elixir_bridge import ElixirBridgeClient, grpc_channel_options, refresh_limits, set_default_client
from .lane import LaneServer
from .runtime import ToolRunner
from .servicer import BridgeServicer

log = logging.getLogger("snakepit_bridge.server")

__all__ = [
    "READY_PREFIX",
    "ERROR_PREFIX",
    "DEFAULT_ADAPTER",
    "StartupError",
    "Worker",
    "build_parser",
    "load_adapter_class",
    "main",
]

READY_PREFIX = "SNAKEPIT_READY"
ERROR_PREFIX = "SNAKEPIT_STARTUP_ERROR"
DEFAULT_ADAPTER = "snakepit_bridge.adapters.showcase.ShowcaseAdapter"
SHUTDOWN_GRACE_S = 2.0
CLEANUP_TIMEOUT_S = 2.5
TELEMETRY_SETTLE_S = 2.0
REGISTER_TIMEOUT_S = 5.0
UNIX_PATH_MAX = 107


class StartupError(Exception):
    """Startup failed; ``message`` is the one-line cause."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.message = " ".join(message.split())
        self.cause = cause


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--instance-name", default=os.environ.get("SNAKEPIT_INSTANCE_NAME", ""))
    parser.add_argument("--instance-token", default=os.environ.get("SNAKEPIT_INSTANCE_TOKEN", ""))
    parser.add_argument("--max-workers", type=int, default=None, help="thread pool size; >1 selects threaded mode")
    parser.add_argument("--mode", choices=("process", "threaded"), default=None, help="worker mode")
    parser.add_argument("--lane", default="", help="also serve calls on the call lane (a Unix socket) at this path")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("SNAKEPIT_LOG_LEVEL", "warning"),
        help="stderr log level (debug, info, warning, error)",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.address is None:
        args.address = f"127.0.0.1:{args.port}" if args.port is not None else "127.0.0.1:0"
    return args, unknown


def threaded_mode(args: argparse.Namespace) -> bool:
    if args.mode == "threaded":
        return True
    if args.mode == "process":
        return False
    return bool(args.max_workers and args.max_workers > 1)


# ------------------------------------------------------------------ adapter loading


def _module_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when ``exc`` says ``module_name`` itself (or a parent) is missing."""
    missing = exc.name or ""
    return bool(missing) and (module_name == missing or module_name.startswith(missing + "."))


def _pick_adapter_class(module: Any) -> type:
    from ..base_adapter import BaseAdapter
    from ..tools import TOOL_ATTR

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
                raise StartupError(f"cannot import adapter module '{spec}': {_describe(inner)}", inner) from inner
            return _pick_adapter_class(whole)
        raise StartupError(f"cannot import adapter module '{module_name}': {exc}", exc) from exc
    except Exception as exc:  # noqa: BLE001 - syntax errors, failing module code, ...
        raise StartupError(f"cannot import adapter module '{module_name}': {_describe(exc)}", exc) from exc

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


# ------------------------------------------------------------------ addresses


def _check_address(address: str) -> None:
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise StartupError(f"cannot bind gRPC server to '{address}': empty socket path")
        if len(path.encode()) > UNIX_PATH_MAX:
            raise StartupError(
                f"cannot bind gRPC server to '{address}': socket path is longer than {UNIX_PATH_MAX} bytes"
            )
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StartupError(f"cannot bind gRPC server to '{address}': directory {directory} does not exist")
    elif ":" not in address:
        raise StartupError(f"cannot bind gRPC server to '{address}': expected unix:/path or HOST:PORT")


def _unix_path(address: str) -> str | None:
    if not address.startswith("unix:"):
        return None
    path = address[len("unix:"):]
    return path[2:] if path.startswith("//") else path


def bound_address(requested: str, port: int) -> str:
    if requested.startswith("unix:"):
        return requested
    host, _, _ = requested.rpartition(":")
    return f"{host}:{port}"


# ------------------------------------------------------------------ helpers


async def _call_maybe_async(fn: Callable[[], Any], *, timeout: float | None = None) -> Any:
    """Run a sync or async callable; sync ones in a daemon thread (so a hung
    hook never keeps the process alive)."""
    if inspect.iscoroutinefunction(fn):
        coro = fn()
        return await (asyncio.wait_for(coro, timeout) if timeout else coro)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        def settle(error: BaseException | None, value: Any) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001
            loop.call_soon_threadsafe(settle, exc, None)
            return
        loop.call_soon_threadsafe(settle, None, result)

    threading.Thread(target=run, name="snakepit-hook", daemon=True).start()
    result = await (asyncio.wait_for(asyncio.shield(future), timeout) if timeout else future)
    if inspect.isawaitable(result):
        result = await (asyncio.wait_for(result, timeout) if timeout else result)
    return result


# ------------------------------------------------------------------ worker


class Worker:
    """One worker: adapter instance, tool runner and gRPC server.

    Used by :func:`main`; tests use it to run a worker inside their process.
    """

    def __init__(
        self,
        adapter: Any,
        address: str,
        *,
        worker_id: str = "",
        max_workers: int | None = None,
        elixir_address: str = "",
        heartbeat: HeartbeatConfig | None = None,
        lane_path: str = "",
        threaded: bool = False,
    ):
        self.adapter = adapter
        self.lane_path = lane_path
        self.threaded = threaded
        self.lane: LaneServer | None = None
        self.requested_address = address
        self.worker_id = worker_id
        self.elixir_address = elixir_address
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers if max_workers and max_workers > 0 else None,
            thread_name_prefix="snakepit-tool",
        )
        self.runner = ToolRunner(adapter, worker_id=worker_id, executor=self.executor)
        self.server: grpc.aio.Server | None = None
        self.address = ""
        self.watchdog = HeartbeatWatchdog(heartbeat) if heartbeat is not None else None
        self.bridge: ElixirBridgeClient | None = None
        self._telemetry_stream: Any = None
        self._cleaned_up = False
        self._stopped = False

    def bind(self) -> str:
        """Create the server and bind it (raises StartupError)."""
        _check_address(self.requested_address)
        options = grpc_channel_options() + [("grpc.so_reuseport", 0)]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_BridgeServiceServicer_to_server(
            BridgeServicer(self.runner, self.worker_id, self.watchdog), self.server
        )
        try:
            port = self.server.add_insecure_port(self.requested_address)
        except Exception as exc:  # noqa: BLE001 - grpc raises RuntimeError on bind failure
            raise StartupError(f"cannot bind gRPC server to '{self.requested_address}': {exc}", exc) from exc
        if port == 0 and not self.requested_address.startswith("unix:"):
            raise StartupError(f"cannot bind gRPC server to '{self.requested_address}'")
        self.address = bound_address(self.requested_address, port)
        return self.address

    async def initialize_adapter(self) -> None:
        init = getattr(self.adapter, "initialize", None)
        if not callable(init):
            return
        try:
            await _call_maybe_async(init)
        except Exception as exc:  # noqa: BLE001
            raise StartupError(
                f"adapter {type(self.adapter).__name__}.initialize() failed: {_describe(exc)}", exc
            ) from exc

    async def start(self) -> str:
        """Bind (if needed), initialize the adapter and start serving."""
        if self.server is None:
            self.bind()
        await self.initialize_adapter()
        assert self.server is not None
        await self.server.start()
        path = _unix_path(self.address)
        if path:
            try:
                os.chmod(path, 0o600)
            except OSError:
                pass
        if self.lane_path:
            self.lane = self._open_lane()
        if self.elixir_address:
            await self._connect_elixir()
        return self.address

    def _open_lane(self) -> LaneServer:
        try:
            lane = LaneServer(
                self.lane_path,
                self.runner,
                asyncio.get_running_loop(),
                inline=not self.threaded,
                executor=self.executor,
            )
        except OSError as exc:
            raise StartupError(f"cannot listen on the call lane '{self.lane_path}': {exc}", exc) from exc
        lane.start()
        return lane

    async def _connect_elixir(self) -> None:
        from ..telemetry.stream import TelemetryStream

        self.bridge = ElixirBridgeClient(self.elixir_address, self.worker_id)
        set_default_client(self.bridge)
        try:
            response = await self.bridge.aregister_tools("", self.runner.tool_specs(), timeout_s=REGISTER_TIMEOUT_S)
            if not response.success:
                log.warning("Elixir refused tool registration: %s", response.error_message)
            else:
                log.info("registered %d tools with Elixir", len(response.tool_ids))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else "?"
            log.warning("could not register tools with Elixir at %s: %s", self.elixir_address, code)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not register tools with Elixir at %s: %s", self.elixir_address, _describe(exc))
        bridge = self.bridge
        self._telemetry_stream = TelemetryStream(bridge.aio_stub, self.worker_id)
        self._telemetry_stream.start()
        # Ready only once it knows whether Elixir listens (one round trip).
        if not await self._telemetry_stream.wait_settled(TELEMETRY_SETTLE_S):
            log.debug("no telemetry control from Elixir within %.1fs; going on", TELEMETRY_SETTLE_S)

    async def cleanup_adapter(self) -> None:
        if self._cleaned_up:
            return
        self._cleaned_up = True
        cleanup = getattr(self.adapter, "cleanup", None)
        if not callable(cleanup):
            return
        try:
            await _call_maybe_async(cleanup, timeout=CLEANUP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("adapter cleanup() did not finish within %.1fs", CLEANUP_TIMEOUT_S)
        except Exception:  # noqa: BLE001
            log.exception("adapter cleanup() failed")

    async def stop(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.lane is not None:
            self.lane.close()
        if self.server is not None:
            await self.server.stop(grace)
        await self.cleanup_adapter()
        if self._telemetry_stream is not None:
            await self._telemetry_stream.stop()
        if self.bridge is not None:
            set_default_client(None)
            try:
                await self.bridge.aclose()
            except Exception:  # noqa: BLE001
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------ main


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
    adapter_cls = load_adapter_class(args.adapter)
    if threaded and not is_thread_safe(adapter_cls):
        raise StartupError(
            f"adapter '{args.adapter}' is not thread-safe, but this worker runs in threaded mode "
            f"(--max-workers {args.max_workers or '?'}{', --mode threaded' if args.mode == 'threaded' else ''}); "
            "declare __thread_safe__ = True (e.g. subclass ThreadSafeAdapter) or use the process profile"
        )
    try:
        adapter = adapter_cls()
    except Exception as exc:  # noqa: BLE001
        raise StartupError(f"cannot instantiate adapter '{args.adapter}': {_describe(exc)}", exc) from exc

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
        _report_startup_error(StartupError(f"worker failed: {_describe(exc)}", exc))
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
