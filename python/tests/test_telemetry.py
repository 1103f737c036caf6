from __future__ import annotations

import asyncio

import pytest

from snakepit_bridge import telemetry
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb


@pytest.fixture
def events():
    seen = []
    telemetry.add_handler(seen.append)
    yield seen


def test_emit_reaches_handlers(events):
    telemetry.emit("model.inference", {"latency_ms": 45, "tokens": 128}, {"model": "m"})
    (event,) = events
    assert event.parts == ["model", "inference"]
    assert event.measurements == {"latency_ms": 45, "tokens": 128}
    assert event.metadata == {"model": "m"}
    assert event.timestamp_ns > 0


def test_leading_python_prefix_is_dropped(events):
    telemetry.emit("python.call.start")
    telemetry.emit(["tool", "execution", "stop"])
    assert [e.parts for e in events] == [["call", "start"], ["tool", "execution", "stop"]]


def test_span_emits_start_and_stop(events):
    with telemetry.span("data_processing", {"stage": "pre"}) as extra:
        extra["rows"] = 10
    start, stop = events
    assert start.parts == ["data_processing", "start"] and "system_time" in start.measurements
    assert stop.parts == ["data_processing", "stop"]
    assert stop.measurements["duration"] >= 0
    assert stop.metadata == {"stage": "pre", "rows": 10}


def test_span_emits_exception_and_reraises(events):
    with pytest.raises(KeyError):
        with telemetry.span("work"):
            raise KeyError("k")
    assert [e.parts[-1] for e in events] == ["start", "exception"]
    assert events[1].metadata["error_type"] == "KeyError"


def test_disabled_telemetry_emits_nothing(events):
    telemetry.set_enabled(False)
    telemetry.emit("x.y")
    with telemetry.span("z"):
        pass
    assert events == []


def test_controls(events):
    hub = telemetry.hub
    hub.apply_control(pb.TelemetryControl(filter=pb.TelemetryEventFilter(deny=["python.noisy.*"])))
    telemetry.emit("noisy.event")
    telemetry.emit("quiet.event")
    assert [e.name for e in events] == ["quiet.event"]

    events.clear()
    hub.apply_control(pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["call.*"])))
    telemetry.emit("call.start")
    telemetry.emit("other")
    assert [e.name for e in events] == ["call.start"]

    events.clear()
    hub.apply_control(pb.TelemetryControl(filter=pb.TelemetryEventFilter()))
    hub.apply_control(
        pb.TelemetryControl(sampling=pb.TelemetrySamplingUpdate(sampling_rate=0.0, event_patterns=["python.sampled.*"]))
    )
    for _ in range(20):
        telemetry.emit("sampled.event")
    telemetry.emit("unsampled.event")
    assert [e.name for e in events] == ["unsampled.event"]

    hub.apply_control(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False)))
    assert not telemetry.is_enabled()


def test_handler_errors_do_not_propagate(events):
    def bad(_record):
        raise RuntimeError("bad handler")

    telemetry.add_handler(bad)
    telemetry.emit("still.fine")
    assert [e.name for e in events] == ["still.fine"]


def test_buffer_is_bounded():
    import asyncio

    hub = telemetry.TelemetryHub(maxlen=3)

    async def go():
        hub.start_buffering(asyncio.get_running_loop())
        for i in range(5):
            hub.emit(f"e.n{i}")
        drained = hub.drain()
        assert [r.name for r in drained] == ["e.n2", "e.n3", "e.n4"]
        assert hub.dropped == 2

    asyncio.run(go())


def test_tool_calls_emit_execution_events(sock_dir, events):
    from helpers import request, run, running_worker
    from sample_adapters import TestAdapter

    async def go():
        async with running_worker(TestAdapter(), sock_dir) as (_, stub):
            await stub.ExecuteTool(request("add", {"a": 1, "b": 2}, session_id="s"))
            await stub.ExecuteTool(request("fail"))

    run(go())
    names = [e.name for e in events]
    # call.* spans the whole request; tool.execution.* the tool's own run.
    assert names == [
        "call.start",
        "tool.execution.start",
        "tool.execution.stop",
        "call.stop",
        "call.start",
        "tool.execution.start",
        "tool.execution.exception",
        "call.exception",
    ]
    assert events[3].metadata["tool"] == "add" and events[3].metadata["session_id"] == "s"
    assert events[2].metadata["tool"] == "add"
    assert events[3].measurements["duration"] >= events[2].measurements["duration"] > 0
    assert events[6].metadata["error_type"] == "ValueError"
    assert events[7].metadata["error_type"] == "ValueError"


def test_log_records_of_a_call_name_its_correlation_id(capsys):
    import logging
    import sys

    from snakepit_bridge.session_context import CorrelationLogFilter, SessionContext, _current

    logger = logging.getLogger("snakepit-test-correlation")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s%(correlation)s"))
    handler.addFilter(CorrelationLogFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside")
        token = _current.set(SessionContext("s1", request_id="r1", metadata={"correlation_id": "order-42"}))
        try:
            logger.info("inside")
        finally:
            _current.reset(token)
    finally:
        logger.removeHandler(handler)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["outside", "inside [correlation_id=order-42]"]


def test_filters_match_the_elixir_names_of_spans_and_user_events():
    hub = telemetry.TelemetryHub()
    seen: list = []
    hub.add_handler(seen.append)
    hub.allow = ["python.span.*"]
    hub.emit(("work", "start"), kind="span")
    hub.emit("model.inference")
    hub.emit(("call", "start"))
    assert [r.name for r in seen] == ["work.start"]
    # The user's own name still matches, and "event" names every user event.
    hub.allow = ["python.model.*", "python.call.*"]
    hub.emit("model.inference")
    hub.emit(("call", "stop"))
    hub.allow, hub.deny = [], ["python.event"]
    hub.emit("other.thing")
    assert [r.name for r in seen] == ["work.start", "model.inference", "call.stop"]


def test_a_wake_up_lost_with_a_closed_loop_does_not_silence_the_next_one():
    hub = telemetry.TelemetryHub()
    old = asyncio.new_event_loop()
    hub.start_buffering(old)
    hub.emit("first")  # schedules a wake-up on `old` ...
    old.close()  # ... which never runs
    hub.drain()

    async def go():
        hub.start_buffering(asyncio.get_running_loop())
        waiter = asyncio.ensure_future(hub.wait_for_events())
        await asyncio.sleep(0)  # the sender waits on an empty buffer
        hub.emit("second")
        await asyncio.wait_for(waiter, 2)
        assert [r.name for r in hub.drain()] == ["second"]

    asyncio.run(go())
