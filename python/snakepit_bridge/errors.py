"""Exceptions raised by the bridge itself (as opposed to by tools).

Each carries a ``kind`` that ends up in ``ToolError.kind`` on the wire.
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "ToolNotFoundError",
    "StreamingToolError",
    "ArgumentBindingError",
    "SerializationError",
    "BatchResultError",
    "StreamCancelled",
    "CallCancelled",
    "ElixirToolError",
    "ElixirBridgeUnavailable",
]


class BridgeError(Exception):
    """Base class for errors produced by snakepit_bridge."""

    kind = "bridge"


class ToolNotFoundError(BridgeError):
    """No tool with the requested name exists on the adapter."""

    kind = "unknown_tool"

    def __init__(self, tool_name: str, available: list[str]):
        self.tool_name = tool_name
        self.available = sorted(available)
        listing = ", ".join(self.available) if self.available else "(none)"
        super().__init__(f"unknown tool '{tool_name}'; available tools: {listing}")


class StreamingToolError(BridgeError):
    """A streaming tool was called through the unary ExecuteTool RPC."""

    kind = "streaming_tool"

    def __init__(self, tool_name: str):
        self.tool_name = tool_name
        super().__init__(
            f"tool '{tool_name}' is a streaming tool; call it with execute_stream "
            "(ExecuteStreamingTool) instead of execute"
        )


class ArgumentBindingError(TypeError):
    """Arguments do not fit the tool's signature.

    A ``TypeError`` subclass so that callers matching on ``TypeError`` keep
    working; on the wire ``ToolError.type`` is ``"TypeError"``.
    """

    kind = "invalid_arguments"
    wire_type = "TypeError"


class SerializationError(BridgeError):
    """A value could not be encoded or decoded."""

    kind = "serialization"


class BatchResultError(BridgeError):
    """A batched tool returned something other than one result per item."""

    kind = "batch_result"


class StreamCancelled(Exception):
    """Raised inside a streaming producer when the consumer went away."""


class CallCancelled(BaseException):
    """Raised inside a sync tool's thread when its call was cancelled: its
    deadline passed or its caller went away.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that ``except
    Exception`` in tool code does not swallow the stop. Clean up in
    ``finally`` blocks as usual.
    """

    kind = "cancelled"


class ElixirToolError(Exception):
    """An Elixir tool called from Python failed.

    ``error_type``/``message``/``traceback``/``kind`` mirror the ToolError the
    Elixir side sent back.
    """

    def __init__(self, tool_name: str, error_type: str, message: str, traceback: str = "", kind: str = ""):
        self.tool_name = tool_name
        self.error_type = error_type
        self.message = message
        self.remote_traceback = traceback
        self.kind = kind
        label = f"{error_type}: " if error_type else ""
        super().__init__(f"Elixir tool '{tool_name}' failed: {label}{message}")


class ElixirBridgeUnavailable(RuntimeError):
    """No Elixir bridge address was configured, or it could not be reached."""
