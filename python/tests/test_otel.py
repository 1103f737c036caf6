"""Tool calls run in OpenTelemetry spans that are children of the
traceparent Elixir sends, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import pytest

trace = pytest.importorskip("opentelemetry.trace")
from helpers import request, run, running_worker  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from sample_adapters import TestAdapter  # noqa: E402

from snakepit_bridge import tool  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider():
    # The global provider can be set once per process; later modules keep it.
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        sdk = TracerProvider()
        trace.set_tracer_provider(sdk)
        current = sdk
    current.add_span_processor(SimpleSpanProcessor(_exporter))
    yield


@pytest.fixture(autouse=True)
def spans():
    _exporter.clear()
    yield _exporter


class TracingAdapter(TestAdapter):
    @tool(description="Makes a span of its own")
    def traced(self) -> dict:
        with trace.get_tracer("user").start_as_current_span("user.work"):
            return {"ok": True}


def _calls(spans):
    return [s for s in spans.get_finished_spans() if s.name.startswith("snakepit.tool ")]


def test_a_call_is_a_child_span_of_the_traceparent(sock_dir, spans):
    async def go():
        async with running_worker(TracingAdapter(), sock_dir) as (_, stub):
            meta = {"traceparent": TRACEPARENT, "correlation_id": "cid-otel"}
            await stub.ExecuteTool(request("add", {"a": 1, "b": 2}, session_id="s1", metadata=meta))

    run(go())
    [span] = _calls(spans)
    assert span.name == "snakepit.tool add"
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert span.attributes["snakepit.correlation_id"] == "cid-otel"
    assert span.attributes["snakepit.session_id"] == "s1"
    assert span.status.is_ok


def test_spans_a_tool_makes_nest_under_the_call(sock_dir, spans):
    async def go():
        async with running_worker(TracingAdapter(), sock_dir) as (_, stub):
            await stub.ExecuteTool(request("traced", {}, metadata={"traceparent": TRACEPARENT}))

    run(go())
    [call] = _calls(spans)
    [user] = [s for s in spans.get_finished_spans() if s.name == "user.work"]
    assert user.parent.span_id == call.context.span_id
    assert user.context.trace_id == call.context.trace_id


def test_a_failing_call_marks_its_span_as_error(sock_dir, spans):
    async def go():
        async with running_worker(TracingAdapter(), sock_dir) as (_, stub):
            response = await stub.ExecuteTool(request("fail", {}, metadata={"traceparent": TRACEPARENT}))
            assert not response.success

    run(go())
    [span] = _calls(spans)
    assert span.status.status_code == trace.StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


def test_without_a_traceparent_the_call_is_a_root_span(sock_dir, spans):
    async def go():
        async with running_worker(TracingAdapter(), sock_dir) as (_, stub):
            await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))

    run(go())
    [span] = _calls(spans)
    assert span.parent is None
