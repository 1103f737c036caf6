"""Batched tools (``@tool(batch=True)``) and batch messages (the envelope
``execute_many`` and the pool's dynamic batching send): the decorator's
checks and metadata, and the runtime's per-item results and errors, for
batched and ordinary tools, sync and async, inline (lane) and on the loop."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from helpers import request, result_of, running_worker

from snakepit_bridge import BaseAdapter, tool
from snakepit_bridge._internal.batches import BATCH_FLAG
from snakepit_bridge._internal.runtime import ToolRunner
from snakepit_bridge.tools import discover_tools


class Batches(BaseAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    @tool(batch=True, max_batch_size=3, max_batch_delay_ms=5)
    def double(self, batch: list[dict[str, Any]]) -> list[Any]:
        self.calls.append(len(batch))
        return [item["x"] * 2 if item["x"] >= 0 else ValueError(f"negative: {item['x']}") for item in batch]

    @tool(batch=True)
    async def adouble(self, batch: list[dict[str, Any]]) -> list[Any]:
        await asyncio.sleep(0)
        return [item["x"] * 2 for item in batch]

    @tool(batch=True)
    def short(self, batch: list[dict[str, Any]]) -> list[Any]:
        return [1]

    @tool(batch=True)
    def explode(self, batch: list[dict[str, Any]]) -> list[Any]:
        raise RuntimeError("the whole batch failed")

    @tool(batch=True)
    def raw(self, batch: list[dict[str, Any]]) -> list[Any]:
        return [bytes([item["n"]]) * 3 for item in batch]

    @tool
    def inc(self, x: int) -> int:
        if x == 13:
            raise KeyError("unlucky")
        return x + 1

    @tool
    async def ainc(self, x: int) -> int:
        return x + 1

    @tool
    def size_of(self, data: bytes) -> int:
        return len(data)

    @tool
    def ticks(self, n: int = 2):
        yield from range(n)


def batch_request(tool_name: str, items: list[Any], binary: dict[str, bytes] | None = None) -> Any:
    return request(tool_name, {"items": items}, metadata={BATCH_FLAG: "1"}, binary=binary)


def outcomes(response: Any) -> list[tuple[str, Any]]:
    """Each item as ("ok", value) or ("error", (type, message, kind))."""
    body = result_of(response)
    out: list[tuple[str, Any]] = [("ok", value) for value in body["ok"]]
    for index, typ, message, _tb, kind in body["errors"]:
        out[index] = ("error", (typ, message, kind))
    for index, data in body["bytes"]:
        out[index] = ("bytes", base64.b64decode(data))
    return out


@pytest.fixture
def runner() -> ToolRunner:
    return ToolRunner(Batches(), worker_id="w")


def run_both(runner: ToolRunner, req: Any) -> list[Any]:
    """The same request on the event loop and, for a tool that runs inline,
    in the calling thread (as the lane's thread runs it)."""

    async def on_loop() -> Any:
        return await runner.execute(req)

    responses = [asyncio.run(on_loop())]
    if runner.runs_inline(req.tool_name):
        responses.append(runner.execute_sync(req, None))
    return responses


# ------------------------------------------------------------------ decorator


def test_batch_metadata_reaches_the_spec():
    tools = discover_tools(Batches())
    spec = tools["double"].to_proto()
    assert dict(spec.metadata) == {"batch": "true", "max_batch_size": "3", "max_batch_delay_ms": "5"}
    assert tools["adouble"].to_spec_dict()["metadata"]["max_batch_size"] == "64"
    assert tools["adouble"].to_spec_dict()["metadata"]["max_batch_delay_ms"] == "2"
    assert tools["double"].batch and not tools["inc"].batch
    assert "batch" not in dict(tools["inc"].to_proto().metadata)


def test_decorator_refuses_bad_batch_settings():
    with pytest.raises(ValueError, match="need batch=True"):
        tool(max_batch_size=3)
    with pytest.raises(ValueError, match="max_batch_size"):
        tool(batch=True, max_batch_size=0)
    with pytest.raises(ValueError, match="max_batch_delay_ms"):
        tool(batch=True, max_batch_delay_ms=-1)
    with pytest.raises(ValueError, match="max_batch_size"):
        tool(batch=True, max_batch_size=True)

    with pytest.raises(ValueError, match="batched and streaming"):

        @tool(batch=True)
        def gen(self, batch):  # type: ignore[no-untyped-def]
            yield batch

    with pytest.raises(ValueError, match="batched and streaming"):

        @tool(batch=True)
        def streamer(self, batch, stream):  # type: ignore[no-untyped-def]
            return batch


# ------------------------------------------------------------------ batches


def test_batched_tool_gets_lists_of_at_most_max_batch_size(runner):
    adapter = runner.adapter
    items = [{"x": i} for i in range(7)]
    for response in run_both(runner, batch_request("double", items)):
        assert outcomes(response) == [("ok", 2 * i) for i in range(7)]
    assert adapter.calls == [3, 3, 1, 3, 3, 1]


def test_an_exception_in_a_result_slot_fails_that_item_alone(runner):
    items = [{"x": 1}, {"x": -5}, {"x": 3}]
    for response in run_both(runner, batch_request("double", items)):
        assert outcomes(response) == [
            ("ok", 2),
            ("error", ("ValueError", "negative: -5", "tool")),
            ("ok", 6),
        ]


def test_async_batched_tool(runner):
    for response in run_both(runner, batch_request("adouble", [{"x": 1}, {"x": 2}])):
        assert outcomes(response) == [("ok", 2), ("ok", 4)]


def test_wrong_number_of_results_fails_every_item(runner):
    for response in run_both(runner, batch_request("short", [{}, {}])):
        assert [kind for kind, _ in outcomes(response)] == ["error", "error"]
        typ, message, kind = outcomes(response)[0][1]
        assert typ == "BatchResultError" and "1 results for 2 items" in message and kind == "batch_result"


def test_a_raising_batched_tool_fails_every_item_of_its_batch(runner):
    for response in run_both(runner, batch_request("explode", [{}, {}, {}])):
        assert outcomes(response) == [("error", ("RuntimeError", "the whole batch failed", "tool"))] * 3


def test_bytes_results_travel_per_item(runner):
    for response in run_both(runner, batch_request("raw", [{"n": 1}, {"n": 2}])):
        assert outcomes(response) == [("bytes", b"\x01\x01\x01"), ("bytes", b"\x02\x02\x02")]


def test_ordinary_tool_runs_once_per_item_with_its_own_errors(runner):
    items: list[Any] = [{"x": 1}, {"x": 13}, {"x": 2, "z": 2}, {"x": 4}]
    for response in run_both(runner, batch_request("inc", items)):
        out = outcomes(response)
        assert out[0] == ("ok", 2) and out[3] == ("ok", 5)
        assert out[1] == ("error", ("KeyError", "'unlucky'", "tool"))
        assert out[2][0] == "error" and out[2][1][0] == "TypeError" and out[2][1][2] == "invalid_arguments"


def test_async_ordinary_tool_in_a_batch(runner):
    for response in run_both(runner, batch_request("ainc", [{"x": 1}, {"x": 2}])):
        assert outcomes(response) == [("ok", 2), ("ok", 3)]


def test_binary_parameters_go_to_their_item(runner):
    binary = {"0:data": b"abc", "1:data": b"abcdef"}
    for response in run_both(runner, batch_request("size_of", [{}, {}], binary)):
        assert outcomes(response) == [("ok", 3), ("ok", 6)]


def test_what_fails_the_whole_message_is_an_ordinary_failure(runner):
    cases = [
        (batch_request("nope", [{}]), "unknown_tool"),
        (batch_request("ticks", [{}]), "streaming_tool"),
        (request("inc", {"items": [1, 2]}, metadata={BATCH_FLAG: "1"}), "serialization"),
        (request("inc", {"x": 1}, metadata={BATCH_FLAG: "1"}), "serialization"),
        (batch_request("size_of", [{}], {"5:data": b"x"}), "serialization"),
    ]
    for req, kind in cases:
        for response in run_both(runner, req):
            assert not response.success and response.error.kind == kind


def test_empty_batch(runner):
    for response in run_both(runner, batch_request("double", [])):
        assert outcomes(response) == []


def test_a_batched_tool_called_once_is_a_batch_of_one(runner):
    for response in run_both(runner, request("double", {"x": 21})):
        assert result_of(response) == 42
    for response in run_both(runner, request("double", {"x": -1})):
        assert not response.success and response.error.type == "ValueError"
    for response in run_both(runner, request("adouble", {"x": 2})):
        assert result_of(response) == 4


def test_a_batch_over_grpc(tmp_path):
    async def go() -> None:
        async with running_worker(Batches(), tmp_path) as (_worker, stub):
            response = await stub.ExecuteTool(batch_request("double", [{"x": 1}, {"x": -1}]))
            assert outcomes(response)[0] == ("ok", 2)
            assert outcomes(response)[1][0] == "error"

    asyncio.run(go())
