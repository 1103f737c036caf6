"""Per-call session context: which session a tool call belongs to, and a way
to call Elixir tools from Python.

Inside a tool, ``self.session_context`` is the context of the call being
served (each concurrent call sees its own, even on one adapter instance).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator, Mapping, cast

from ._internal import call_context
from ._internal.elixir_bridge import ElixirBridgeClient, get_default_client
from .errors import ElixirBridgeUnavailable

__all__ = ["SessionContext", "ElixirToolsProxy", "ElixirToolHandle", "current_context"]

# The tool runner sets it for each call, to a SessionContext.
_current = call_context.current


def current_context() -> SessionContext | None:
    """The SessionContext of the tool call running in this task/thread, if any."""
    return cast("SessionContext | None", _current.get())


class CorrelationLogFilter(logging.Filter):
    """Adds the running call's correlation id to every log record:
    ``record.correlation_id`` (``""`` outside calls) and
    ``record.correlation`` (`` [correlation_id=...]`` or ``""``, for format
    strings). The worker installs it on its log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        cid = call_context.correlation_id()
        record.correlation_id = cid
        record.correlation = f" [correlation_id={cid}]" if cid else ""
        return True


class SessionContext:
    """What a tool knows about the call it is serving.

    Attributes:
        session_id: the request's session id ("" for calls outside a session).
        worker_id: this worker's id.
        request_id: the caller's request id, if any.
        tool_name: the tool being called.
        metadata: the request's string metadata (correlation id etc.).
        timeout_ms: the caller's budget for the call (0 = none).
    """

    def __init__(
        self,
        session_id: str = "",
        *,
        worker_id: str = "",
        request_id: str = "",
        tool_name: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout_ms: int = 0,
        bridge: ElixirBridgeClient | None = None,
    ):
        self.session_id = session_id or ""
        self.worker_id = worker_id
        self.request_id = request_id
        self.tool_name = tool_name
        self.metadata: dict[str, str] = dict(metadata or {})
        self.timeout_ms = int(timeout_ms or 0)
        self._bridge = bridge
        self._started = time.monotonic()

    # ------------------------------------------------------------ helpers

    @property
    def correlation_id(self) -> str:
        return self.metadata.get("correlation_id", "") or self.request_id

    @property
    def bridge(self) -> ElixirBridgeClient:
        client = self._bridge or get_default_client()
        if client is None:
            raise ElixirBridgeUnavailable(
                "this worker has no Elixir bridge (it was started without --elixir-address)"
            )
        return client

    def remaining_timeout_s(self) -> float | None:
        """Seconds left of the caller's budget, or None when there is none."""
        if self.timeout_ms <= 0:
            return None
        left = self.timeout_ms / 1000.0 - (time.monotonic() - self._started)
        return max(left, 0.001)

    def _outbound_metadata(self) -> dict[str, str]:
        meta = {}
        if self.correlation_id:
            meta["correlation_id"] = self.correlation_id
        if self.worker_id:
            meta["worker_id"] = self.worker_id
        if self.tool_name:
            meta["caller_tool"] = self.tool_name
        return meta

    @staticmethod
    def _merge(params: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        if params is not None:
            if not isinstance(params, Mapping):
                raise TypeError(f"Elixir tool parameters must be a mapping, got {type(params).__name__}")
            merged.update(params)
        merged.update(kwargs)
        return merged

    # ------------------------------------------------------------ Elixir tools

    def call_elixir_tool(self, tool_name: str, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Call an Elixir tool registered for this session and return its result.

        Parameters can be given as a dict, as keyword arguments, or both.
        ``bytes`` values travel as binary parameters. Raises
        :class:`~snakepit_bridge.errors.ElixirToolError` when the tool fails and
        :class:`~snakepit_bridge.errors.ElixirBridgeUnavailable` when no bridge
        is configured or reachable. Blocks: from ``async`` tools prefer
        :meth:`acall_elixir_tool`.
        """
        return self.bridge.execute_tool(
            self.session_id,
            tool_name,
            self._merge(params, kwargs),
            metadata=self._outbound_metadata(),
            timeout_s=self.remaining_timeout_s(),
        )

    async def acall_elixir_tool(
        self, tool_name: str, params: Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> Any:
        """Awaitable :meth:`call_elixir_tool` for async tools."""
        return await self.bridge.aexecute_tool(
            self.session_id,
            tool_name,
            self._merge(params, kwargs),
            metadata=self._outbound_metadata(),
            timeout_s=self.remaining_timeout_s(),
        )

    def list_elixir_tools(self) -> list[dict[str, Any]]:
        """Describe the Elixir tools exposed to Python for this session."""
        return self.bridge.list_tools(self.session_id)

    @property
    def elixir_tools(self) -> ElixirToolsProxy:
        """``ctx.elixir_tools["name"](**params)`` or ``ctx.elixir_tools.name(...)``."""
        return ElixirToolsProxy(self)

    def __repr__(self) -> str:
        return f"SessionContext(session_id={self.session_id!r}, tool_name={self.tool_name!r})"


class ElixirToolHandle:
    """A callable standing for one Elixir tool."""

    def __init__(self, context: SessionContext, name: str):
        self._context = context
        self.name = name

    def __call__(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        return self._context.call_elixir_tool(self.name, params, **kwargs)

    async def acall(self, params: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        return await self._context.acall_elixir_tool(self.name, params, **kwargs)

    def __repr__(self) -> str:
        return f"<Elixir tool {self.name!r}>"


class ElixirToolsProxy(Mapping[str, ElixirToolHandle]):
    """Mapping-like access to Elixir tools.

    Indexing never contacts Elixir (an unknown name fails when called);
    iterating and ``len`` ask Elixir which tools are exposed.
    """

    def __init__(self, context: SessionContext):
        self._context = context

    def __getitem__(self, name: str) -> ElixirToolHandle:
        if not isinstance(name, str) or not name:
            raise KeyError(name)
        return ElixirToolHandle(self._context, name)

    def __getattr__(self, name: str) -> ElixirToolHandle:
        if name.startswith("_"):
            raise AttributeError(name)
        return ElixirToolHandle(self._context, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._names()

    def _names(self) -> list[str]:
        return [spec["name"] for spec in self._context.list_elixir_tools()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())
