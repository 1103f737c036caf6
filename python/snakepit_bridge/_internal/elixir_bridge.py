"""Client for the ElixirBridge service (served by the Rust core for the BEAM).

Workers use it to register their tools at startup, to call Elixir tools from
inside Python tools and to stream telemetry up. The address comes from the
worker's ``--elixir-address`` flag.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any, Mapping

import grpc

from .. import serialization
from ..errors import ElixirBridgeUnavailable, ElixirToolError
from ..generated import snakepit_bridge_pb2 as pb
from ..generated import snakepit_bridge_pb2_grpc as pb_grpc
from . import auth

log = logging.getLogger("snakepit_bridge.elixir_bridge")

__all__ = [
    "ElixirBridgeClient",
    "bridge_channel_options",
    "get_default_client",
    "set_default_client",
    "grpc_channel_options",
]

DEFAULT_CALL_TIMEOUT_S = 30.0
def _max_message_bytes() -> int:
    """The VM's max_message_bytes (SNAKEPIT_MAX_MESSAGE_BYTES), so both sides
    agree on one limit; 256 MiB when run outside Snakepit."""
    try:
        return max(int(os.environ.get("SNAKEPIT_MAX_MESSAGE_BYTES", "")), 1024)
    except ValueError:
        return 256 * 1024 * 1024


MAX_MESSAGE_BYTES = _max_message_bytes()


def refresh_limits() -> int:
    """Re-read the limit from the environment (a forked worker's differs from
    the fork server's)."""
    global MAX_MESSAGE_BYTES
    MAX_MESSAGE_BYTES = _max_message_bytes()
    return MAX_MESSAGE_BYTES


def grpc_channel_options() -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def bridge_channel_options(address: str) -> list[tuple[str, Any]]:
    """Channel options for the ElixirBridge client.

    Over a Unix socket, grpc-core sends the percent-encoded socket path as
    ``:authority``, which the Rust (h2) server rightly rejects as malformed
    (RST_STREAM PROTOCOL_ERROR); such channels announce ``localhost``.
    """
    options = grpc_channel_options()
    if address.startswith("unix:"):
        options.append(("grpc.default_authority", "localhost"))
    return options


def _split_params(
    params: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    plain: dict[str, Any] = {}
    binary: dict[str, bytes] = {}
    for key, value in (params or {}).items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            binary[str(key)] = bytes(value)
        else:
            plain[str(key)] = value
    return plain, binary


def _decode_response(tool_name: str, response: Any) -> Any:
    if not response.success:
        err = response.error
        raise ElixirToolError(
            tool_name,
            err.type or "ElixirError",
            err.message or "call failed without a message",
            err.traceback,
            err.kind,
        )
    if response.has_binary_result:
        return bytes(response.binary_result)
    if not response.result_json:
        return None
    return serialization.loads(response.result_json)



# A bridge that is being replaced (its process restarted) refuses new calls
# with "the call was not run" until its connections close and the channel
# reaches the new one: such calls are sent again after these pauses (s),
# within their own deadline. The last entry ends the retries.
# Up to ~6 s in all (within the call's deadline): a bridge restarting under
# load may keep its old connections for seconds before they close.
_NOT_RUN_RETRY_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 0.0)


def _retry_safe(exc: grpc.RpcError, deadline: float, pause: float) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return (
        code == grpc.StatusCode.UNAVAILABLE
        and "was not run" in details
        and pause > 0
        and time.monotonic() + pause < deadline
    )

class ElixirBridgeClient:
    """Talks to ElixirBridge at ``address`` (``unix:/path`` or ``host:port``).

    Both a blocking channel (for sync tools running in worker threads) and an
    asyncio channel (for async tools and the worker's own background tasks)
    are opened lazily. All methods are safe to call from any thread; the
    ``a``-prefixed coroutines must run on the worker's event loop.
    """

    def __init__(self, address: str, worker_id: str = "", *, default_timeout_s: float = DEFAULT_CALL_TIMEOUT_S):
        if not address:
            raise ValueError("an Elixir bridge address is required")
        self.address = address
        self.worker_id = worker_id
        self.default_timeout_s = default_timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.ElixirBridgeStub | None = None
        self._aio_channel: grpc.aio.Channel | None = None
        self._aio_stub: pb_grpc.ElixirBridgeStub | None = None
        self._aio_loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ channels

    def _sync_stub(self) -> pb_grpc.ElixirBridgeStub:
        with self._lock:
            if self._stub is None:
                self._channel = grpc.insecure_channel(self.address, options=bridge_channel_options(self.address))
                self._stub = pb_grpc.ElixirBridgeStub(self._channel)
            return self._stub

    def aio_stub(self) -> pb_grpc.ElixirBridgeStub:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._aio_stub is None or self._aio_loop is not loop:
                self._aio_channel = grpc.aio.insecure_channel(
                    self.address, options=bridge_channel_options(self.address)
                )
                self._aio_stub = pb_grpc.ElixirBridgeStub(self._aio_channel)
                self._aio_loop = loop
            return self._aio_stub

    def _metadata(self) -> list[tuple[str, str]]:
        worker = [("x-snakepit-worker-id", self.worker_id)] if self.worker_id else []
        return worker + auth.metadata()

    # ------------------------------------------------------------ requests

    def _tool_request(
        self,
        session_id: str,
        tool_name: str,
        params: Mapping[str, Any] | None,
        metadata: Mapping[str, str] | None,
        timeout_s: float,
    ) -> Any:
        plain, binary = _split_params(params)
        request = pb.ExecuteElixirToolRequest(
            session_id=session_id or "",
            tool_name=tool_name,
            args_json=serialization.dumps(plain),
            timeout_ms=int(timeout_s * 1000),
        )
        for key, value in binary.items():
            request.binary_parameters[key] = value
        for meta_key, meta_value in (metadata or {}).items():
            request.metadata[str(meta_key)] = str(meta_value)
        return request

    def execute_tool(
        self,
        session_id: str,
        tool_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Call an Elixir tool and return its decoded result (blocking)."""
        timeout = timeout_s or self.default_timeout_s
        request = self._tool_request(session_id, tool_name, params, metadata, timeout)
        deadline = time.monotonic() + timeout
        for pause in _NOT_RUN_RETRY_PAUSES:
            try:
                response = self._sync_stub().ExecuteElixirTool(
                    request, timeout=max(deadline - time.monotonic(), 0.001), metadata=self._metadata()
                )
                return _decode_response(tool_name, response)
            except grpc.RpcError as exc:
                if not _retry_safe(exc, deadline, pause):
                    raise self._rpc_failure(tool_name, exc) from exc
            time.sleep(pause)
        raise AssertionError("unreachable: the last pause is never taken")

    async def aexecute_tool(
        self,
        session_id: str,
        tool_name: str,
        params: Mapping[str, Any] | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Async variant of :meth:`execute_tool` (run on the worker's loop)."""
        timeout = timeout_s or self.default_timeout_s
        request = self._tool_request(session_id, tool_name, params, metadata, timeout)
        deadline = time.monotonic() + timeout
        for pause in _NOT_RUN_RETRY_PAUSES:
            try:
                response = await self.aio_stub().ExecuteElixirTool(
                    request, timeout=max(deadline - time.monotonic(), 0.001), metadata=self._metadata()
                )
                return _decode_response(tool_name, response)
            except grpc.RpcError as exc:
                if not _retry_safe(exc, deadline, pause):
                    raise self._rpc_failure(tool_name, exc) from exc
            await asyncio.sleep(pause)
        raise AssertionError("unreachable: the last pause is never taken")

    def _rpc_failure(self, tool_name: str, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return ElixirBridgeUnavailable(
                f"Elixir bridge at {self.address} is unavailable while calling '{tool_name}': {details}"
            )
        name = code.name if code is not None else "RpcError"
        return ElixirToolError(tool_name, f"grpc.{name}", details or "", "", "bridge")

    def list_tools(self, session_id: str, *, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Elixir tools exposed to Python for ``session_id``."""
        try:
            response = self._sync_stub().GetExposedElixirTools(
                pb.GetExposedElixirToolsRequest(session_id=session_id or ""),
                timeout=timeout_s or self.default_timeout_s,
                metadata=self._metadata(),
            )
        except grpc.RpcError as exc:
            raise self._rpc_failure("GetExposedElixirTools", exc) from exc
        return [
            {
                "name": spec.name,
                "description": spec.description,
                "parameters": [
                    {"name": p.name, "type": p.type, "required": p.required, "description": p.description}
                    for p in spec.parameters
                ],
                "supports_streaming": spec.supports_streaming,
                "metadata": dict(spec.metadata),
            }
            for spec in response.tools
        ]

    async def aregister_tools(self, session_id: str, specs: list[Any], *, timeout_s: float = 5.0) -> Any:
        request = pb.RegisterToolsRequest(session_id=session_id or "", worker_id=self.worker_id)
        request.tools.extend(specs)
        return await self.aio_stub().RegisterTools(request, timeout=timeout_s, metadata=self._metadata())

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._stub = None

    async def aclose(self) -> None:
        self.close()
        with self._lock:
            channel, self._aio_channel = self._aio_channel, None
            self._aio_stub = None
            self._aio_loop = None
        if channel is not None:
            await channel.close()


_default_client: ElixirBridgeClient | None = None


def set_default_client(client: ElixirBridgeClient | None) -> None:
    """Install the process-wide client used by session contexts."""
    global _default_client
    _default_client = client


def get_default_client() -> ElixirBridgeClient | None:
    return _default_client
