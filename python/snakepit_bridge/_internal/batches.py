"""Batch messages: how a batch is read, run and answered.

Batches (``Snakepit.execute_many/3`` and the pool's dynamic batching) ride
on the same ``ExecuteTool`` message: the request's metadata holds
``snakepit-batch: "1"``, its arguments are ``{"items": [args, ...]}`` and a
binary parameter ``name`` of item ``i`` travels as ``"i:name"``. A batched
tool (``@tool(batch=True)``) gets the items as one list, in sub-lists of at
most its ``max_batch_size``; any other tool runs once per item, one after
the other. The reply is one success whose result is
``{"ok": [result or null, ...], "errors": [[i, type, message, traceback,
kind], ...], "bytes": [[i, base64], ...]}``: each item has its own result
or error. Whatever fails the message as a whole (an unknown tool, a
malformed batch, a reply too large) is an ordinary failure, which Elixir
gives to every item. A batched tool called with one item's arguments (no
flag) runs as a batch of one.
"""

from __future__ import annotations

import base64
import inspect
import logging
import time
from typing import Any, Callable

from .. import serialization
from ..errors import BatchResultError, SerializationError, StreamingToolError
from ..generated import snakepit_bridge_pb2 as pb
from ..tools import ToolInfo
from .responses import check_size, tool_error

log = logging.getLogger("snakepit_bridge.runtime")

__all__ = [
    "BATCH_FLAG",
    "BATCH_ITEMS",
    "BatchResult",
    "batch_items",
    "batch_of_one",
    "batch_response",
    "each_item",
    "in_batches",
]

# The metadata flag and argument key of a batch message (see the module doc).
BATCH_FLAG = "snakepit-batch"
BATCH_ITEMS = "items"


class BatchResult:
    """What a batch message's run gives: per item a value, or the exception
    that fails that item alone."""

    __slots__ = ("outcomes",)

    def __init__(self, outcomes: list[Any]):
        self.outcomes = outcomes


def batch_items(request: Any, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The argument dicts of a batch message (``args``: its decoded
    arguments), binary parameters included."""
    name = request.tool_name
    items = args.get(BATCH_ITEMS)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise SerializationError(f"a batch of '{name}' must hold a list of argument objects under '{BATCH_ITEMS}'")
    for key, value in request.binary_parameters.items():
        index, sep, param = key.partition(":")
        if not sep or not index.isdigit() or int(index) >= len(items):
            raise SerializationError(f"binary parameter '{key}' of a batch names no item ('<index>:<name>')")
        items[int(index)][param] = bytes(value)
    return items


def _plain(name: str, value: Any) -> Any:
    """An item's value; a stream or pending awaitable is no result."""
    if inspect.isgenerator(value):
        value.close()
        raise StreamingToolError(name)
    if inspect.isasyncgen(value) or inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise StreamingToolError(name) if inspect.isasyncgen(value) else TypeError(
            f"tool '{name}' returned an awaitable from a sync function inside a batch"
        )
    return value


Binder = Callable[[dict[str, Any]], tuple[list[Any], dict[str, Any]]]


def each_item(
    name: str, func: Callable[..., Any], bind: Binder, items: list[dict[str, Any]], *, is_async: bool
) -> Callable[[], Any]:
    """Runs an ordinary tool once per item, one after the other; an item's
    exception is that item's outcome (a cancel, or what a worker must not
    swallow, ends the whole batch)."""
    if is_async:

        async def run_async() -> BatchResult:
            out: list[Any] = []
            for item in items:
                try:
                    positional, keywords = bind(item)
                    value = func(*positional, **keywords)
                    if inspect.isawaitable(value):
                        value = await value
                    out.append(_plain(name, value))
                except Exception as exc:  # noqa: BLE001 - the item's own error
                    out.append(exc)
            return BatchResult(out)

        return run_async

    def run() -> BatchResult:
        out: list[Any] = []
        for item in items:
            try:
                positional, keywords = bind(item)
                out.append(_plain(name, func(*positional, **keywords)))
            except Exception as exc:  # noqa: BLE001 - the item's own error
                out.append(exc)
        return BatchResult(out)

    return run


def _results_of(name: str, results: Any, n: int) -> list[Any]:
    """A batched tool's results for ``n`` items: a list of ``n``; anything
    else fails every item."""
    if isinstance(results, tuple):
        results = list(results)
    if not isinstance(results, list):
        return [BatchResultError(f"batched tool '{name}' must return a list, got {type(results).__name__}")] * n
    if len(results) != n:
        return [BatchResultError(f"batched tool '{name}' returned {len(results)} results for {n} items")] * n
    return results


def in_batches(info: ToolInfo, items: list[dict[str, Any]]) -> Callable[[], Any]:
    """Runs a batched tool on the items, at most ``max_batch_size`` at a time;
    a sub-batch that raises fails its own items."""
    size = info.max_batch_size
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    func = info.func
    if info.is_coroutine:

        async def run_async() -> BatchResult:
            out: list[Any] = []
            for part in parts:
                try:
                    out.extend(_results_of(info.name, await func(part), len(part)))
                except Exception as exc:  # noqa: BLE001 - the sub-batch's error
                    out.extend([exc] * len(part))
            return BatchResult(out)

        return run_async

    def run() -> BatchResult:
        out: list[Any] = []
        for part in parts:
            try:
                out.extend(_results_of(info.name, _plain(info.name, func(part)), len(part)))
            except Exception as exc:  # noqa: BLE001 - the sub-batch's error
                out.extend([exc] * len(part))
        return BatchResult(out)

    return run


def batch_of_one(info: ToolInfo, args: dict[str, Any]) -> Callable[[], Any]:
    """A batched tool called with one item's arguments: its one result, or
    its one exception raised."""

    def first(results: Any) -> Any:
        (value,) = _results_of(info.name, results, 1)
        if isinstance(value, BaseException):
            raise value
        return value

    if info.is_coroutine:

        async def one_async() -> Any:
            return first(await info.func([args]))

        return one_async

    def one() -> Any:
        return first(_plain(info.name, info.func([args])))

    return one


def batch_response(result: BatchResult, started: int) -> Any:
    """One response for a batch: each item's result, error or bytes."""
    ok: list[Any] = []
    errors: list[list[Any]] = []
    blobs: list[list[Any]] = []
    for index, value in enumerate(result.outcomes):
        if isinstance(value, BaseException):
            ok.append(None)
            err = tool_error(value)
            errors.append([index, err.type, err.message, err.traceback, err.kind])
        elif isinstance(value, (bytes, bytearray, memoryview)):
            ok.append(None)
            blobs.append([index, base64.b64encode(value).decode("ascii")])
        else:
            ok.append(value)
    if errors:
        log.debug("%d of %d items failed", len(errors), len(ok))
    response = pb.ExecuteToolResponse(success=True)
    response.result_json = serialization.dumps({"ok": ok, "errors": errors, "bytes": blobs})
    response.execution_time_us = (time.perf_counter_ns() - started) // 1000
    check_size(response, "result")
    return response
