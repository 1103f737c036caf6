"""Runs tool calls: resolves the tool, binds arguments, runs it in the right
place (thread pool or event loop) and turns results and exceptions into the
protobuf responses of the wire contract (:mod:`.responses`, which also says
how errors map). Batch messages are read, run and answered by
:mod:`.batches`; streaming calls by :mod:`.tool_streams`, on this runner's
resolution, context and call registry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import time
from typing import Any, Callable

from .. import serialization, telemetry, zero_copy
from ..base_adapter import BaseAdapter
from ..errors import (
    ArgumentBindingError,
    CallCancelled,
    SerializationError,
    StreamingToolError,
    ToolNotFoundError,
)
from ..generated import snakepit_bridge_pb2 as pb
from ..session_context import SessionContext
from ..streaming import ToolStream
from ..telemetry import otel
from ..tools import ToolInfo, discover_tools
from . import call_context, thread_checks
from .batches import BATCH_FLAG, BatchResult, batch_items, batch_of_one, batch_response, each_item, in_batches
from .cancellation import CANCELLED, FINISHED, ActiveCall, CallRegistry
from .responses import result_response, tool_error
from .sessions import SessionTable
from .thread_checks import ConcurrencyCheck

log = logging.getLogger("snakepit_bridge.runtime")

__all__ = ["ToolRunner", "ResolvedCall"]

# The session context's token and the call's span (see telemetry.otel).
_CallToken = tuple[contextvars.Token[Any], Any]


class ResolvedCall:
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
        self._uses_base_context = isinstance(adapter, BaseAdapter)

    # ------------------------------------------------------------ specs

    def tool_specs(self) -> list[Any]:
        return [info.to_proto() for info in self.tools.values()]

    def tool_names(self) -> list[str]:
        return list(self.tools)

    # ------------------------------------------------------------ resolution

    def context_for(self, request: Any) -> SessionContext:
        return SessionContext(
            request.session_id,
            worker_id=self.worker_id,
            request_id=request.request_id,
            tool_name=request.tool_name,
            metadata=dict(request.metadata),
            timeout_ms=request.timeout_ms,
        )

    def _arguments(self, request: Any) -> dict[str, Any]:
        args = _decoded_args(request, f"arguments of '{request.tool_name}'")
        for key, value in request.binary_parameters.items():
            args[key] = bytes(value)
        return args

    def resolve(self, request: Any, ctx: SessionContext, stream: ToolStream | None) -> ResolvedCall:
        if stream is None and BATCH_FLAG in request.metadata:
            return self._resolve_batch(request, ctx)
        args = self._arguments(request)
        name = request.tool_name
        if self.legacy_execute is not None:
            return ResolvedCall(name, self.legacy_execute, [name, args, ctx], {}, is_async=self.legacy_is_async)
        info = self.tools.get(name)
        if info is None:
            raise ToolNotFoundError(name, list(self.tools))
        if info.batch:
            return ResolvedCall(name, batch_of_one(info, args), [], {}, is_async=info.is_coroutine)
        if stream is None and info.produces_stream:
            raise StreamingToolError(name)
        positional, keywords = info.bind(args, stream)
        return ResolvedCall(name, info.func, positional, keywords, is_async=info.is_coroutine)

    # ------------------------------------------------------------ batches

    def _resolve_batch(self, request: Any, ctx: SessionContext) -> ResolvedCall:
        name = request.tool_name
        items = batch_items(request, _decoded_args(request, f"the batch of '{name}'"))
        if self.legacy_execute is not None:
            legacy = self.legacy_execute

            def legacy_args(item: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
                return [name, item, ctx], {}

            run = each_item(name, legacy, legacy_args, items, is_async=self.legacy_is_async)
            return ResolvedCall(name, run, [], {}, is_async=self.legacy_is_async)
        info = self.tools.get(name)
        if info is None:
            raise ToolNotFoundError(name, list(self.tools))
        if info.produces_stream:
            raise StreamingToolError(name)
        if info.batch:
            run = in_batches(info, items)
        else:
            run = each_item(name, info.func, info.bind, items, is_async=info.is_coroutine)
        return ResolvedCall(name, run, [], {}, is_async=info.is_coroutine)

    # ------------------------------------------------------------ running

    def enter_context(self, ctx: SessionContext) -> contextvars.Token[Any]:
        token = call_context.current.set(ctx)
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

    async def _run_call(self, call: ResolvedCall, active: ActiveCall | None = None) -> Any:
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
        ctx = self.context_for(request)
        self.sessions.touch(request.session_id)
        token = (self.enter_context(ctx), self.start_span(request))
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
        call_context.current.reset(context_token)

    def start_span(self, request: Any) -> otel.Handle:
        if not otel.available():
            return None
        return otel.start_call(request.tool_name, request.metadata, request.session_id, telemetry.hub.worker_id)

    async def execute(self, request: Any) -> Any:
        started, ctx, token, tele_meta = self._begin(request)
        active: ActiveCall | None = None
        try:
            try:
                active = self.calls.begin(request.request_id, request.tool_name)
                call = self.resolve(request, ctx, None)
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
                call = self.resolve(request, ctx, None)
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

    def _run_call_here(self, call: ResolvedCall, active: ActiveCall | None) -> Any:
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
        if isinstance(result, BatchResult):
            return batch_response(result, started)
        return result_response(result, started)

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


def _decoded_args(request: Any, what: str) -> dict[str, Any]:
    """The request's ``args_json``, zero-copy handles resolved."""
    try:
        args = serialization.decode_args(request.args_json)
        if zero_copy.MARKER_BYTES in request.args_json:
            args = zero_copy.resolve(args)
    except ValueError as exc:
        raise SerializationError(f"cannot decode {what}: {exc}") from exc
    return args


def _cancelling() -> bool:
    """Is the current task itself being cancelled (not just a task it awaited)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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


def _tool_started(call: ResolvedCall) -> int:
    """``tool.execution.start``: the tool's own run (``call.*`` spans the
    whole request, decoding and encoding included)."""
    telemetry.emit(("tool", "execution", "start"), {"system_time": time.time_ns()}, {"tool": call.name})
    return time.perf_counter_ns()


def _tool_ended(call: ResolvedCall, started: int, exc: BaseException | None = None) -> None:
    duration = time.perf_counter_ns() - started
    if exc is None:
        telemetry.emit(("tool", "execution", "stop"), {"duration": duration}, {"tool": call.name})
    else:
        meta = {"tool": call.name, "error_type": type(exc).__name__}
        telemetry.emit(("tool", "execution", "exception"), {"duration": duration}, meta)
