"""Streaming calls (``ExecuteStreamingTool``, and the lane's streams): a
tool's producer feeds a channel, whose items become ``ToolChunk`` messages.

A producer is whatever the tool gives back: a sync or async generator, or a
value (one final chunk). Async producers run as a task on the event loop,
sync ones in the runner's thread pool under their call, so a ``CancelTool``
stops them. A consumer that goes away stops the producer at its next item
(``StreamCancelled``); every error ends the stream with an error chunk.
Resolution, the session context and the call registry are the
:class:`~snakepit_bridge._internal.runtime.ToolRunner`'s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import time
from typing import Any, AsyncIterator, Callable

from .. import telemetry
from ..errors import CallCancelled, StreamCancelled
from ..streaming import DONE, FAILED, ITEM, Channel, ToolStream, is_chunk_like
from ..telemetry import otel
from . import call_context
from .cancellation import CANCELLED, FINISHED, STOPPED_EARLY, ActiveCall
from .responses import error_chunk, item_chunk
from .runtime import ResolvedCall, ToolRunner

log = logging.getLogger("snakepit_bridge.runtime")

__all__ = ["begin_stream", "stream"]

# What draining a generator gives when it yielded a final chunk itself.
_ALREADY_FINAL = object()


def begin_stream(runner: ToolRunner, request: Any, channel: Any) -> tuple[ActiveCall | None, Any] | None:
    """Resolve a streaming call on ``runner`` and start its producer
    feeding ``channel`` (a :class:`Channel`, or the lane's); returns
    ``(active, producer)``, or puts the failure on ``channel`` and returns
    None. Runs on the event loop."""
    ctx = runner.context_for(request)
    runner.sessions.touch(request.session_id)
    token = runner.enter_context(ctx)
    active: ActiveCall | None = None
    try:
        try:
            active = runner.calls.begin(request.request_id, request.tool_name)
            call = runner.resolve(request, ctx, ToolStream(channel))
            call.stream_meta = {"tool": request.tool_name, "session_id": request.session_id, "stream": True}
            telemetry.emit(("call", "start"), {"system_time": time.time_ns()}, call.stream_meta)
            call.stream_started = time.perf_counter_ns()
            # Current while the producer starts (it copies this context).
            call.span = runner.start_span(request)
        except CallCancelled as exc:
            channel.fail(exc)
            return None
        except Exception as exc:  # noqa: BLE001
            if active is not None:
                runner.calls.end(active, FINISHED)
            channel.fail(exc)
            return None
        try:
            return active, _start_producer(runner, call, channel, active)
        finally:
            otel.detach(call.span)
    finally:
        call_context.current.reset(token)


async def stream(runner: ToolRunner, request: Any) -> AsyncIterator[Any]:
    """Run a tool for ExecuteStreamingTool, yielding ToolChunk messages."""
    channel = Channel(asyncio.get_running_loop())
    started = begin_stream(runner, request, channel)
    active, producer = started if started is not None else (None, None)

    index = 0
    finished = False
    try:
        while True:
            kind, payload = await channel.get()
            if kind == ITEM:
                try:
                    chunk = item_chunk(index, payload)
                except Exception as exc:  # noqa: BLE001
                    finished = True
                    yield error_chunk(index, exc, "serialization")
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
                    chunk = item_chunk(index, payload, final=True)
                except Exception as exc:  # noqa: BLE001
                    yield error_chunk(index, exc, "serialization")
                    return
                yield chunk
                return
            elif kind == FAILED:
                finished = True
                yield error_chunk(index, payload)
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


def _start_producer(runner: ToolRunner, call: ResolvedCall, channel: Channel, active: ActiveCall | None) -> Any:
    loop = asyncio.get_running_loop()
    if call.is_async or inspect.isasyncgenfunction(inspect.unwrap(getattr(call.func, "__func__", call.func))):
        task = loop.create_task(_produce_async(call, channel, runner.executor))
        if active is not None:
            active.task = task
            task.add_done_callback(
                lambda t: runner.calls.end(
                    active, CANCELLED if t.cancelled() or active.cancel_requested else FINISHED
                )
            )
        return task
    ctx = contextvars.copy_context()
    produce: Callable[[], object] = functools.partial(_produce_sync, call, channel, runner.executor)
    if active is not None:
        produce = functools.partial(_stoppable_producer, active, produce, channel)
    return loop.run_in_executor(runner.executor, ctx.run, produce)


async def _produce_async(call: ResolvedCall, channel: Channel, executor: concurrent.futures.Executor) -> None:
    try:
        await _produce_async_items(call, channel, executor)
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


async def _produce_async_items(
    call: ResolvedCall, channel: Channel, executor: concurrent.futures.Executor
) -> None:
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
        value = await loop.run_in_executor(executor, _drain_generator, result, channel)
        if value is not _ALREADY_FINAL:
            channel.finish(value)
        return
    channel.finish(result)


def _produce_sync(call: ResolvedCall, channel: Channel, executor: concurrent.futures.Executor) -> object:
    """Run a sync producer; STOPPED_EARLY when its consumer went away."""
    try:
        result = call.func(*call.args, **call.kwargs)
        if inspect.isgenerator(result):
            value = _drain_generator(result, channel)
            if value is not _ALREADY_FINAL:
                channel.finish(value)
        elif inspect.isawaitable(result) or inspect.isasyncgen(result):
            # A sync callable handed back async work: run it on the loop.
            inner = ResolvedCall(call.name, lambda: result, [], {}, is_async=True)
            future = asyncio.run_coroutine_threadsafe(_produce_async(inner, channel, executor), channel.loop)
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
        _fail_stream(channel, exc)
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


def _stream_ended(call: ResolvedCall, exc: BaseException | None = None) -> None:
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
