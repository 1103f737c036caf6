"""The protobuf messages a call's outcome travels in: an ``ExecuteTool``
success, a ``ToolError`` for a failure, and the ``ToolChunk`` messages of a stream.

Error mapping (``ToolError``):

=====================  =========================  ==========================
situation              type                       kind
=====================  =========================  ==========================
tool raised            exception class name       ``tool``
unknown tool name      ``ToolNotFoundError``      ``unknown_tool``
arguments don't fit    ``TypeError``              ``invalid_arguments``
args_json not JSON /   decode error class         ``serialization``
not an object
result not encodable   encode error class         ``serialization``
streaming tool called  ``StreamingToolError``     ``streaming_tool``
via ExecuteTool
=====================  =========================  ==========================

``message`` is ``str(exc)``; ``traceback`` the formatted Python traceback.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from .. import serialization
from ..errors import (
    ArgumentBindingError,
    BridgeError,
    CallCancelled,
    SerializationError,
    StreamingToolError,
    ToolNotFoundError,
)
from ..generated import snakepit_bridge_pb2 as pb
from ..streaming import is_chunk_like
from . import elixir_bridge

log = logging.getLogger("snakepit_bridge.runtime")

__all__ = ["tool_error", "result_response", "item_chunk", "error_chunk", "check_size", "BINARY_CONTENT_TYPE"]

BINARY_CONTENT_TYPE = "application/octet-stream"


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def tool_error(exc: BaseException, kind: str | None = None) -> Any:
    """Build a ToolError message for ``exc``."""
    own = isinstance(exc, (BridgeError, ArgumentBindingError, CallCancelled))
    err_type = ArgumentBindingError.wire_type if isinstance(exc, ArgumentBindingError) else type(exc).__name__
    return pb.ToolError(
        type=err_type,
        message=str(exc),
        traceback=_format_traceback(exc),
        kind=kind or (exc.kind if own else "tool"),  # type: ignore[attr-defined]
    )


def result_response(result: Any, started: int) -> Any:
    """The success response for a tool's result (``started``: the call's
    ``perf_counter_ns``)."""
    response = pb.ExecuteToolResponse(success=True)
    if isinstance(result, (bytes, bytearray, memoryview)):
        response.has_binary_result = True
        response.binary_result = bytes(result)
    else:
        response.result_json = serialization.dumps(result)
    response.execution_time_us = (time.perf_counter_ns() - started) // 1000
    check_size(response, "result")
    return response


def _str_metadata(metadata: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not metadata:
        return out
    for key, value in dict(metadata).items():
        out[str(key)] = value if isinstance(value, str) else serialization.dumps(value).decode("utf-8")
    return out


def item_chunk(index: int, item: Any, *, final: bool = False) -> Any:
    """The ``ToolChunk`` of the ``index``-th item a producer put on a stream."""
    metadata: dict[str, str] = {}
    is_final = final
    data = item
    if is_chunk_like(item):
        data = item.data
        is_final = final or bool(item.is_final)
        metadata = _str_metadata(getattr(item, "metadata", None))
    chunk = pb.ToolChunk(chunk_id=str(index), is_final=is_final)
    if data is None and is_final:
        chunk.data = b""
    elif isinstance(data, (bytes, bytearray, memoryview)):
        chunk.data = bytes(data)
        metadata.setdefault("content_type", BINARY_CONTENT_TYPE)
    else:
        chunk.data = serialization.dumps(data)
    for key, value in metadata.items():
        chunk.metadata[key] = value
    check_size(chunk, "stream chunk")
    return chunk


def error_chunk(index: int, exc: BaseException, kind: str | None = None) -> Any:
    """The final ``ToolChunk`` of a stream that failed with ``exc``."""
    if not isinstance(exc, (ToolNotFoundError, StreamingToolError, ArgumentBindingError)):
        log.debug("streaming tool failed", exc_info=exc)
    return pb.ToolChunk(chunk_id=str(index), data=b"", is_final=True, error=tool_error(exc, kind))


def check_size(message: Any, what: str) -> None:
    """Refuse a message larger than the transport carries."""
    size = message.ByteSize()
    limit = elixir_bridge.MAX_MESSAGE_BYTES
    if size > limit:
        raise SerializationError(
            f"the {what} is {size} bytes, more than max_message_bytes ({limit}); "
            "return large arrays and tables as zero-copy handles (snakepit_bridge.zero_copy.export)"
        )
