"""Runs tool calls: resolves the tool, binds arguments, runs it in the right
place (thread pool or event loop) and turns results and exceptions into the
protobuf responses of the wire contract.

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

import asyncio
import base64
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import time
import traceback
from typing import Any, AsyncIterator, Callable

from .. import serialization, telemetry, zero_copy
from ..errors import (
    ArgumentBindingError,
    BatchResultError,
    BridgeError,
    CallCancelled,
    SerializationError,
    StreamCancelled,
    StreamingToolError,
    ToolNotFoundError,
)
from ..generated import snakepit_bridge_pb2 as pb
from ..session_context import SessionContext
from ..streaming import DONE, FAILED, ITEM, Channel, ToolStream, is_chunk_like
from ..telemetry import otel
from ..tools import ToolInfo, discover_tools
from . import elixir_bridge, thread_checks
from .call_context import current as _current
from .cancellation import CANCELLED, FINISHED, STOPPED_EARLY, ActiveCall, CallRegistry
from .sessions import SessionTable
from .thread_checks import ConcurrencyCheck

log = logging.getLogger("snakepit_bridge.runtime")

__all__ = ["ToolRunner", "tool_error", "BATCH_FLAG", "BATCH_ITEMS"]

BINARY_CONTENT_TYPE = "application/octet-stream"

# The metadata flag and argument key of a batch message (see the module doc).
BATCH_FLAG = "snakepit-batch"
BATCH_ITEMS = "items"


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


def _str_metadata(metadata: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not metadata:
        return out
    for key, value in dict(metadata).items():
        out[str(key)] = value if isinstance(value, str) else serialization.dumps(value).decode("utf-8")
    return out


# The session context's token and the call's span (see telemetry.otel).
_CallToken = tuple[contextvars.Token[Any], Any]


class _Call:
    """A resolved call: the callable plus how it must be run."""

    def __init__(self, name: str, func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], *, is_async: bool):
        self.name = name
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.is_async = is_async
        # A streaming call's start (perf_counter_ns), for its call.* events.
        self.stream_started: int | None = None
        self.stream_meta: dict[str, Any] = {}
        self.span: Any = None


class ToolRunner:
    """Executes tool calls against one adapter instance."""

    def __init__(
        self,
        adapter: Any,
        *,
        worker_id: str = "",
        executor: concurrent.futures.Executor | None = None,
        sessions: SessionTable | None = None,
    ):
        self.adapter = adapter
        self.worker_id = worker_id
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(thread_name_prefix="snakepit-tool")
        self.sessions = sessions or SessionTable()
        self.calls = CallRegistry()
        # thread_safety_checks: only meaningful when calls really overlap.
        self.thread_checks = ConcurrencyCheck() if thread_checks.enabled_from_env() else None
        self.tools: dict[str, ToolInfo] = discover_tools(adapter)
        legacy = getattr(adapter, "execute_tool", None)
        self.legacy_execute: Callable[..., Any] | None = legacy if callable(legacy) else None
        # Looked at once, not on every call.
        self.legacy_is_async = self.legacy_execute is not None and inspect.iscoroutinefunction(
            inspect.unwrap(getattr(self.legacy_execute, "__func__", self.legacy_execute))
        )
        self._uses_base_context = _has_context_property(adapter)

    # ------------------------------------------------------------ specs

    def tool_specs(self) -> list[Any]:
        return [info.to_proto() for info in self.tools.values()]

    def tool_names(self) -> list[str]:
        return list(self.tools)

    # ------------------------------------------------------------ resolution

    def _context(self, request: Any) -> SessionContext:
        return SessionContext(
            request.session_id,
            worker_id=self.worker_id,
            request_id=request.request_id,
            tool_name=request.tool_name,
            metadata=dict(request.metadata),
            timeout_ms=request.timeout_ms,
        )

    def _arguments(self, request: Any) -> dict[str, Any]:
        try:
            args = serialization.decode_args(request.args_json)
            if zero_copy.MARKER_BYTES in request.args_json:
                args = zero_copy.resolve(args)
        except ValueError as exc:
            raise SerializationError(f"cannot decode arguments of '{request.tool_name}': {exc}") from exc
        for key, value in request.binary_parameters.items():
            args[key] = bytes(value)
        return args

    def _resolve(self, request: Any, ctx: SessionContext, stream: ToolStream | None) -> _Call:
        if stream is None and BATCH_FLAG in request.metadata:
            return self._resolve_batch(request, ctx)
        args = self._arguments(request)
        name = request.tool_name
        if self.legacy_execute is not None:
            return _Call(name, self.legacy_execute, [name, args, ctx], {}, is_async=self.legacy_is_async)
        info = self.tools.get(name)
        if info is None:
            raise ToolNotFoundError(name, list(self.tools))
        if info.batch:
            return _Call(name, _batch_of_one(info, args), [], {}, is_async=info.is_coroutine)
        if stream is None and info.produces_stream:
            raise StreamingToolError(name)
        positional, keywords = info.bind(args, stream)
        return _Call(name, info.func, positional, keywords, is_async=info.is_coroutine)

    # ------------------------------------------------------------ batches

    def _batch_items(self, request: Any) -> list[dict[str, Any]]:
        """The argument dicts of a batch message, binary parameters included."""
        name = request.tool_name
        try:
            args = serialization.decode_args(request.args_json)
            if zero_copy.MARKER_BYTES in request.args_json:
                args = zero_copy.resolve(args)
        except ValueError as exc:
            raise SerializationError(f"cannot decode the batch of '{name}': {exc}") from exc
        items = args.get(BATCH_ITEMS)
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise SerializationError(f"a batch of '{name}' must hold a list of argument objects under '{BATCH_ITEMS}'")
        for key, value in request.binary_parameters.items():
            index, sep, param = key.partition(":")
            if not sep or not index.isdigit() or int(index) >= len(items):
                raise SerializationError(f"binary parameter '{key}' of a batch names no item ('<index>:<name>')")
            items[int(index)][param] = bytes(value)
        return items

    def _resolve_batch(self, request: Any, ctx: SessionContext) -> _Call:
        items = self._batch_items(request)
        name = request.tool_name
        if self.legacy_execute is not None:
            legacy = self.legacy_execute

            def legacy_args(item: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
                return [name, item, ctx], {}

            run = _each_item(name, legacy, legacy_args, items, is_async=self.legacy_is_async)
            return _Call(name, run, [], {}, is_async=self.legacy_is_async)
        info = self.tools.get(name)
        if info is None:
            raise ToolNotFoundError(name, list(self.tools))
        if info.produces_stream:
            raise StreamingToolError(name)
        if info.batch:
            run = _in_batches(info, items)
        else:
            run = _each_item(name, info.func, info.bind, items, is_async=info.is_coroutine)
        return _Call(name, run, [], {}, is_async=info.is_coroutine)

    def _batch_success(self, result: _BatchResult, started: int) -> Any:
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
        _check_size(response, "result")
        return response

    # ------------------------------------------------------------ running

    def _enter_context(self, ctx: SessionContext) -> contextvars.Token[Any]:
        token = _current.set(ctx)
        if not self._uses_base_context:
            # Adapters that are not BaseAdapter subclasses get the context as
            # an attribute (or through their own setter).
            setter = getattr(self.adapter, "set_session_context", None)
            try:
                if callable(setter):
                    setter(ctx)
                else:
                    self.adapter.session_context = ctx
            except Exception:  # noqa: BLE001
                pass
        return token

    async def _run_call(self, call: _Call, active: ActiveCall | None = None) -> Any:
        """Run a call to completion: awaited on the loop or in the thread pool.

        With ``active`` (the call has a request id) a sync tool runs under it,
        so a cancel can stop it in its thread, and async work runs in a task
        of its own, which a cancel cancels.
        """
        started = _tool_started(call)
        try:
            if call.is_async:
                result = call.func(*call.args, **call.kwargs)
            else:
                loop = asyncio.get_running_loop()
                ctx = contextvars.copy_context()
                fn: Callable[[], Any] = functools.partial(call.func, *call.args, **call.kwargs)
                if self.thread_checks is not None:
                    fn = self.thread_checks.wrap(call.name, call.func, fn)
                if active is not None:
                    fn = functools.partial(active.run_in_thread, fn)
                result = await loop.run_in_executor(self.executor, ctx.run, fn)
            if inspect.isawaitable(result):
                if active is not None:
                    active.task = asyncio.ensure_future(result)
                    result = active.task
                result = await result
        except BaseException as exc:
            _tool_ended(call, started, exc)
            raise
        _tool_ended(call, started)
        return result

    # ------------------------------------------------------------ unary

    def runs_inline(self, tool_name: str) -> bool:
        """Does ``tool_name`` run as plain sync code (so a lane thread may run
        it itself)? Unknown tools do: their error is made without a loop."""
        if self.legacy_execute is not None:
            return not self.legacy_is_async
        info = self.tools.get(tool_name)
        return info is None or not info.is_coroutine

    def _begin(self, request: Any) -> tuple[int, SessionContext, _CallToken, dict[str, Any]]:
        started = time.perf_counter_ns()
        ctx = self._context(request)
        self.sessions.touch(request.session_id)
        token = (self._enter_context(ctx), self._start_span(request))
        tele_meta = {"tool": request.tool_name, "session_id": request.session_id}
        telemetry.emit(("call", "start"), {"system_time": time.time_ns()}, tele_meta)
        return started, ctx, token, tele_meta

    def _respond(self, request: Any, result: Any, started: int, tele_meta: dict[str, Any]) -> Any:
        """The response for a tool's result."""
        try:
            response = self._success(result, started)
        except Exception as exc:  # noqa: BLE001
            return self._failure(exc, started, tele_meta, "serialization")
        duration = time.perf_counter_ns() - started
        telemetry.emit(("call", "stop"), {"duration": duration}, tele_meta)
        return response

    def _end(self, active: ActiveCall | None, token: _CallToken) -> None:
        # Sync tools end their call in their own thread; a call that never
        # reached a thread (bad arguments, an async tool) ends here.
        if active is not None and (active.task is not None or active.thread_id is None):
            self.calls.end(active, FINISHED)
        context_token, span = token
        otel.end_call(span)
        _current.reset(context_token)

    def _start_span(self, request: Any) -> otel.Handle:
        if not otel.available():
            return None
        return otel.start_call(request.tool_name, request.metadata, request.session_id, telemetry.hub.worker_id)

    async def execute(self, request: Any) -> Any:
        started, ctx, token, tele_meta = self._begin(request)
        active: ActiveCall | None = None
        try:
            try:
                active = self.calls.begin(request.request_id, request.tool_name)
                call = self._resolve(request, ctx, None)
                result = await self._run_call(call, active)
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    await _close_generator(result)
                    raise StreamingToolError(request.tool_name)
            except asyncio.CancelledError:
                # The client went away (this coroutine is cancelled) or
                # CancelTool cancelled the tool's task: either way it stops.
                if active is None:
                    raise
                active.cancel()
                if active.task is not None:
                    self.calls.end(active, CANCELLED)
                if _cancelling():
                    raise
                return self._failure(CallCancelled("the call was cancelled"), started, tele_meta, "cancelled")
            except BaseException as exc:  # noqa: BLE001 - everything a tool raises is reported
                return self._raised(exc, started, tele_meta)
            return self._respond(request, result, started, tele_meta)
        finally:
            self._end(active, token)

    def execute_sync(self, request: Any, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """:meth:`execute` run in the calling thread, for a tool that
        :meth:`runs_inline` (the lane's thread calls it). A sync tool that
        hands back an awaitable has it awaited on ``loop``."""
        started, ctx, token, tele_meta = self._begin(request)
        active: ActiveCall | None = None
        try:
            try:
                active = self.calls.begin(request.request_id, request.tool_name)
                call = self._resolve(request, ctx, None)
                result = self._run_call_here(call, active)
                if inspect.isawaitable(result):
                    if loop is None:
                        raise RuntimeError(f"tool '{call.name}' returned an awaitable and no event loop runs here")
                    result = asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    if inspect.isgenerator(result):
                        result.close()
                    raise StreamingToolError(request.tool_name)
            except BaseException as exc:  # noqa: BLE001 - everything a tool raises is reported
                return self._raised(exc, started, tele_meta)
            return self._respond(request, result, started, tele_meta)
        finally:
            self._end(active, token)

    def _raised(self, exc: BaseException, started: int, tele_meta: dict[str, Any]) -> Any:
        """The response for an exception out of a call; what a worker must
        not swallow (KeyboardInterrupt, SystemExit, loop cancellation) goes on."""
        if isinstance(exc, CallCancelled):
            return self._failure(exc, started, tele_meta, "cancelled")
        if isinstance(exc, ArgumentBindingError):
            return self._failure(exc, started, tele_meta, "invalid_arguments")
        if isinstance(exc, Exception):
            return self._failure(exc, started, tele_meta)
        raise exc

    def _run_call_here(self, call: _Call, active: ActiveCall | None) -> Any:
        """Run a sync call in this thread (under ``active``, so a cancel
        can stop it)."""
        fn: Callable[[], Any] = functools.partial(call.func, *call.args, **call.kwargs)
        if self.thread_checks is not None:
            fn = self.thread_checks.wrap(call.name, call.func, fn)
        started = _tool_started(call)
        try:
            result = active.run_in_thread(fn) if active is not None else fn()
        except BaseException as exc:
            _tool_ended(call, started, exc)
            raise
        _tool_ended(call, started)
        return result

    async def cancel(self, request_id: str, wait_s: float) -> str:
        """Cancel the call ``request_id``; see :mod:`snakepit_bridge.cancellation`."""
        return await self.calls.cancel(request_id, wait_s)

    def _success(self, result: Any, started: int) -> Any:
        if isinstance(result, _BatchResult):
            return self._batch_success(result, started)
        response = pb.ExecuteToolResponse(success=True)
        if isinstance(result, (bytes, bytearray, memoryview)):
            response.has_binary_result = True
            response.binary_result = bytes(result)
        else:
            response.result_json = serialization.dumps(result)
        response.execution_time_us = (time.perf_counter_ns() - started) // 1000
        _check_size(response, "result")
        return response

    def _failure(self, exc: BaseException, started: int, meta: dict[str, Any], kind: str | None = None) -> Any:
        duration = time.perf_counter_ns() - started
        otel.fail_current(exc)
        telemetry.emit(
            ("call", "exception"),
            {"duration": duration},
            {**meta, "error_type": type(exc).__name__},
        )
        if isinstance(exc, (ToolNotFoundError, StreamingToolError, SerializationError, ArgumentBindingError)):
            log.info("tool call failed: %s", exc)
        else:
            log.debug("tool raised", exc_info=exc)
        return pb.ExecuteToolResponse(
            success=False,
            error=tool_error(exc, kind),
            execution_time_us=duration // 1000,
        )

    # ------------------------------------------------------------ streaming

    def begin_stream(self, request: Any, channel: Any) -> tuple[ActiveCall | None, Any] | None:
        """Resolve a streaming call and start its producer feeding
        ``channel`` (a :class:`Channel`, or the lane's); returns ``(active,
        producer)``, or puts the failure on ``channel`` and returns None.
        Runs on the event loop."""
        ctx = self._context(request)
        self.sessions.touch(request.session_id)
        token = self._enter_context(ctx)
        active: ActiveCall | None = None
        try:
            try:
                active = self.calls.begin(request.request_id, request.tool_name)
                call = self._resolve(request, ctx, ToolStream(channel))
                call.stream_meta = {"tool": request.tool_name, "session_id": request.session_id, "stream": True}
                telemetry.emit(("call", "start"), {"system_time": time.time_ns()}, call.stream_meta)
                call.stream_started = time.perf_counter_ns()
                # Current while the producer starts (it copies this context).
                call.span = self._start_span(request)
            except CallCancelled as exc:
                channel.fail(exc)
                return None
            except Exception as exc:  # noqa: BLE001
                if active is not None:
                    self.calls.end(active, FINISHED)
                channel.fail(exc)
                return None
            try:
                return active, self._start_producer(call, channel, active)
            finally:
                otel.detach(call.span)
        finally:
            _current.reset(token)

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        """Run a tool for ExecuteStreamingTool, yielding ToolChunk messages."""
        channel = Channel(asyncio.get_running_loop())
        started = self.begin_stream(request, channel)
        active, producer = started if started is not None else (None, None)

        index = 0
        finished = False
        try:
            while True:
                kind, payload = await channel.get()
                if kind == ITEM:
                    try:
                        chunk = self._item_chunk(index, payload)
                    except Exception as exc:  # noqa: BLE001
                        finished = True
                        yield self._error_chunk(index, exc, "serialization")
                        return
                    index += 1
                    if chunk.is_final:
                        finished = True
                    yield chunk
                    if finished:
                        return
                elif kind == DONE:
                    finished = True
                    try:
                        chunk = self._item_chunk(index, payload, final=True)
                    except Exception as exc:  # noqa: BLE001
                        yield self._error_chunk(index, exc, "serialization")
                        return
                    yield chunk
                    return
                elif kind == FAILED:
                    finished = True
                    yield self._error_chunk(index, payload)
                    return
        finally:
            # Client went away or the stream ended early: stop the producer
            # (StreamCancelled at its next item), and let a CancelTool that
            # follows wait for that instead of raising into its clean-up.
            if active is not None and not finished:
                active.stopping()
            channel.cancel()
            if isinstance(producer, asyncio.Task) and not producer.done():
                producer.cancel()
            if not finished:
                log.debug("stream of '%s' cancelled after %d chunks", request.tool_name, index)

    def _start_producer(self, call: _Call, channel: Channel, active: ActiveCall | None = None) -> Any:
        loop = asyncio.get_running_loop()
        if call.is_async or inspect.isasyncgenfunction(inspect.unwrap(getattr(call.func, "__func__", call.func))):
            task = loop.create_task(self._produce_async(call, channel))
            if active is not None:
                active.task = task
                task.add_done_callback(
                    lambda t: self.calls.end(
                        active, CANCELLED if t.cancelled() or active.cancel_requested else FINISHED
                    )
                )
            return task
        ctx = contextvars.copy_context()
        produce: Callable[[], object] = functools.partial(self._produce_sync, call, channel)
        if active is not None:
            produce = functools.partial(_stoppable_producer, active, produce, channel)
        return loop.run_in_executor(self.executor, ctx.run, produce)

    async def _produce_async(self, call: _Call, channel: Channel) -> None:
        try:
            await self._produce_async_items(call, channel)
        except (StreamCancelled, asyncio.CancelledError) as exc:
            _stream_ended(call, exc)
            return
        except BaseException as exc:  # noqa: BLE001 - SystemExit and bare BaseException too
            _stream_ended(call, exc)
            _fail_stream(channel, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return
        _stream_ended(call)

    async def _produce_async_items(self, call: _Call, channel: Channel) -> None:
        result = call.func(*call.args, **call.kwargs)
        if inspect.isawaitable(result):
            result = await result
        if inspect.isasyncgen(result):
            try:
                async for item in result:
                    await channel.put(item)
                    if is_chunk_like(item) and getattr(item, "is_final", False):
                        return
            finally:
                await result.aclose()
            channel.finish(None)
            return
        if inspect.isgenerator(result):
            loop = asyncio.get_running_loop()
            value = await loop.run_in_executor(self.executor, _drain_generator, result, channel)
            if value is not _ALREADY_FINAL:
                channel.finish(value)
            return
        channel.finish(result)

    def _produce_sync(self, call: _Call, channel: Channel) -> object:
        """Run a sync producer; STOPPED_EARLY when its consumer went away."""
        try:
            result = call.func(*call.args, **call.kwargs)
            if inspect.isgenerator(result):
                value = _drain_generator(result, channel)
                if value is not _ALREADY_FINAL:
                    channel.finish(value)
            elif inspect.isawaitable(result) or inspect.isasyncgen(result):
                # A sync callable handed back async work: run it on the loop.
                future = asyncio.run_coroutine_threadsafe(
                    self._produce_async(_Call(call.name, lambda: result, [], {}, is_async=True), channel),
                    channel.loop,
                )
                future.result()
            else:
                channel.finish(result)
        except StreamCancelled as exc:
            # Stopped because its consumer went away: interrupted, not finished.
            _stream_ended(call, exc)
            return STOPPED_EARLY
        except CallCancelled:
            raise  # _stoppable_producer reports it
        except BaseException as exc:  # noqa: BLE001 - SystemExit and bare BaseException too
            _stream_ended(call, exc)
            _fail_stream(channel, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return None
        _stream_ended(call)
        return None

    def _item_chunk(self, index: int, item: Any, *, final: bool = False) -> Any:
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
        _check_size(chunk, "stream chunk")
        return chunk

    def _error_chunk(self, index: int, exc: BaseException, kind: str | None = None) -> Any:
        if not isinstance(exc, (ToolNotFoundError, StreamingToolError, ArgumentBindingError)):
            log.debug("streaming tool failed", exc_info=exc)
        return pb.ToolChunk(chunk_id=str(index), data=b"", is_final=True, error=tool_error(exc, kind))


_ALREADY_FINAL = object()


class _BatchResult:
    """What a batch message's run gives: per item a value, or the exception
    that fails that item alone."""

    __slots__ = ("outcomes",)

    def __init__(self, outcomes: list[Any]):
        self.outcomes = outcomes


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


def _each_item(
    name: str, func: Callable[..., Any], bind: Binder, items: list[dict[str, Any]], *, is_async: bool
) -> Callable[[], Any]:
    """Runs an ordinary tool once per item, one after the other; an item's
    exception is that item's outcome (a cancel, or what a worker must not
    swallow, ends the whole batch)."""
    if is_async:

        async def run_async() -> _BatchResult:
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
            return _BatchResult(out)

        return run_async

    def run() -> _BatchResult:
        out: list[Any] = []
        for item in items:
            try:
                positional, keywords = bind(item)
                out.append(_plain(name, func(*positional, **keywords)))
            except Exception as exc:  # noqa: BLE001 - the item's own error
                out.append(exc)
        return _BatchResult(out)

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


def _in_batches(info: ToolInfo, items: list[dict[str, Any]]) -> Callable[[], Any]:
    """Runs a batched tool on the items, at most ``max_batch_size`` at a time;
    a sub-batch that raises fails its own items."""
    size = info.max_batch_size
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    func = info.func
    if info.is_coroutine:

        async def run_async() -> _BatchResult:
            out: list[Any] = []
            for part in parts:
                try:
                    out.extend(_results_of(info.name, await func(part), len(part)))
                except Exception as exc:  # noqa: BLE001 - the sub-batch's error
                    out.extend([exc] * len(part))
            return _BatchResult(out)

        return run_async

    def run() -> _BatchResult:
        out: list[Any] = []
        for part in parts:
            try:
                out.extend(_results_of(info.name, _plain(info.name, func(part)), len(part)))
            except Exception as exc:  # noqa: BLE001 - the sub-batch's error
                out.extend([exc] * len(part))
        return _BatchResult(out)

    return run


def _batch_of_one(info: ToolInfo, args: dict[str, Any]) -> Callable[[], Any]:
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


def _check_size(message: Any, what: str) -> None:
    size = message.ByteSize()
    limit = elixir_bridge.MAX_MESSAGE_BYTES
    if size > limit:
        raise SerializationError(
            f"the {what} is {size} bytes, more than max_message_bytes ({limit}); "
            "return large arrays and tables as zero-copy handles (snakepit_bridge.zero_copy.export)"
        )


def _cancelling() -> bool:
    """Is the current task itself being cancelled (not just a task it awaited)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _fail_stream(channel: Any, exc: BaseException) -> None:
    """End the stream with ``exc`` as its error chunk. Whatever a producer
    raised, ``SystemExit`` and bare ``BaseException`` included, reaches the
    caller as an error instead of a stream that goes silent."""
    try:
        channel.fail(exc)
    except StreamCancelled:
        pass


def _stoppable_producer(active: ActiveCall, produce: Callable[[], object], channel: Channel) -> object:
    """A sync producer under its call, so a cancel stops it in its thread."""
    try:
        return active.run_in_thread(produce)
    except CallCancelled as exc:
        try:
            channel.fail(exc)
        except StreamCancelled:
            pass
        return None


def _drain_generator(gen: Any, channel: Channel) -> Any:
    """Feed a sync generator into the channel (runs in a worker thread).

    Returns the generator's return value, or _ALREADY_FINAL when it yielded a
    final chunk itself.
    """
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            channel.put_threadsafe(item)
            if is_chunk_like(item) and item.is_final:
                return _ALREADY_FINAL
    finally:
        gen.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _close_generator(gen: Any) -> None:
    try:
        if inspect.isasyncgen(gen):
            await gen.aclose()
        else:
            gen.close()
    except Exception:  # noqa: BLE001
        pass


def _has_context_property(adapter: Any) -> bool:
    from ..base_adapter import BaseAdapter

    return isinstance(adapter, BaseAdapter)


def _tool_started(call: _Call) -> int:
    """``tool.execution.start``: the tool's own run (``call.*`` spans the
    whole request, decoding and encoding included)."""
    telemetry.emit(("tool", "execution", "start"), {"system_time": time.time_ns()}, {"tool": call.name})
    return time.perf_counter_ns()


def _tool_ended(call: _Call, started: int, exc: BaseException | None = None) -> None:
    duration = time.perf_counter_ns() - started
    if exc is None:
        telemetry.emit(("tool", "execution", "stop"), {"duration": duration}, {"tool": call.name})
    else:
        meta = {"tool": call.name, "error_type": type(exc).__name__}
        telemetry.emit(("tool", "execution", "exception"), {"duration": duration}, meta)


def _stream_ended(call: _Call, exc: BaseException | None = None) -> None:
    """``call.stop`` / ``call.exception`` of a streaming call, once its
    producer is done (an inner producer of the same call has no start)."""
    if call.stream_started is None:
        return
    if exc is not None and not isinstance(exc, (StreamCancelled, asyncio.CancelledError)):
        otel.fail_call(call.span, exc)
    otel.end_call(call.span, attached=False)
    duration = time.perf_counter_ns() - call.stream_started
    if exc is None:
        telemetry.emit(("call", "stop"), {"duration": duration}, call.stream_meta)
    else:
        meta = {**call.stream_meta, "error_type": type(exc).__name__}
        telemetry.emit(("call", "exception"), {"duration": duration}, meta)
