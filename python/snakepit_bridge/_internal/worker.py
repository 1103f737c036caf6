"""One worker in a process: the adapter instance, its tool runner, the gRPC
server (and the call lane beside it), the link to Elixir's bridge, and the
order in which they start and stop. The command line
(:mod:`snakepit_bridge._internal.command_line`) runs one; tests run one
inside their own process.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import grpc

from ..generated import snakepit_bridge_pb2_grpc as pb_grpc
from ..heartbeat import HeartbeatConfig, HeartbeatWatchdog
from ..telemetry.stream import TelemetryStream
from .elixir_bridge import ElixirBridgeClient, grpc_channel_options, set_default_client
from .lane import LaneServer
from .runtime import ToolRunner
from .servicer import BridgeServicer
from .startup import StartupError, describe

# The command line's logger too: one name for the worker's life cycle.
log = logging.getLogger("snakepit_bridge.server")

__all__ = ["Worker", "SHUTDOWN_GRACE_S"]

SHUTDOWN_GRACE_S = 2.0
CLEANUP_TIMEOUT_S = 2.5
TELEMETRY_SETTLE_S = 2.0
REGISTER_TIMEOUT_S = 5.0
UNIX_PATH_MAX = 107


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
        # Imported by name above: concurrent.futures imports it on first use,
        # which would be in each forked worker rather than once in the fork server.
        self.executor = ThreadPoolExecutor(
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
                f"adapter {type(self.adapter).__name__}.initialize() failed: {describe(exc)}", exc
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
        self.bridge = ElixirBridgeClient(self.elixir_address, self.worker_id)
        set_default_client(self.bridge)
        # The telemetry stream opens while the tools are registered: the two
        # round trips to Elixir overlap instead of following each other.
        self._telemetry_stream = TelemetryStream(self.bridge.aio_stub, self.worker_id)
        self._telemetry_stream.start()
        await self._register_tools(self.bridge)
        # Ready only once it knows whether Elixir listens (one round trip).
        if not await self._telemetry_stream.wait_settled(TELEMETRY_SETTLE_S):
            log.debug("no telemetry control from Elixir within %.1fs; going on", TELEMETRY_SETTLE_S)

    async def _register_tools(self, bridge: ElixirBridgeClient) -> None:
        try:
            response = await bridge.aregister_tools("", self.runner.tool_specs(), timeout_s=REGISTER_TIMEOUT_S)
            if not response.success:
                log.warning("Elixir refused tool registration: %s", response.error_message)
            else:
                log.info("registered %d tools with Elixir", len(response.tool_ids))
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else "?"
            log.warning("could not register tools with Elixir at %s: %s", self.elixir_address, code)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not register tools with Elixir at %s: %s", self.elixir_address, describe(exc))

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

