"""The default ShowcaseAdapter, through the real server."""

from __future__ import annotations

import hashlib
import os
import zlib

from helpers import request, result_of, run, running_worker

from snakepit_bridge import serialization
from snakepit_bridge.adapters.showcase import ShowcaseAdapter


def call_all(sock_dir, calls):
    async def go():
        async with running_worker(ShowcaseAdapter(), sock_dir) as (_, stub):
            out = []
            for tool, args, kw in calls:
                if kw.get("stream"):
                    chunks = [c async for c in stub.ExecuteStreamingTool(request(tool, args))]
                    out.append(chunks)
                else:
                    out.append(await stub.ExecuteTool(request(tool, args, binary=kw.get("binary"))))
            return out

    return run(go())


def test_basic_tools(sock_dir):
    ping, echo, add, addf, info, text, stats = call_all(sock_dir, [
        ("ping", {}, {}),
        ("echo", {"message": "hello", "n": [1, {"x": None}]}, {}),
        ("add", {"a": 5, "b": 3}, {}),
        ("add", {"a": 1.5, "b": 2}, {}),
        ("adapter_info", {}, {}),
        ("process_text", {"text": "hello", "operation": "upper"}, {}),
        ("get_stats", {}, {}),
    ])
    p = result_of(ping)
    assert p["status"] == "pong" and p["message"] == "pong" and p["pid"] == os.getpid()
    assert result_of(echo) == {"message": "hello", "n": [1, {"x": None}]}
    assert add.result_json == b'{"result":8}'
    assert result_of(addf) == {"result": 3.5}
    i = result_of(info)
    assert i["adapter_name"] == "ShowcaseAdapter" and "stream_data" in i["tools"]
    # Tools only tests need are fixtures, not part of the shipped adapter.
    assert "spawn_child" not in i["tools"]
    assert result_of(text) == {"result": "HELLO", "operation": "upper", "success": True}
    s = result_of(stats)
    assert s["adapter"]["name"] == "ShowcaseAdapter" and s["system"]["pid"] == os.getpid()


def test_process_text_operations_and_errors(sock_dir):
    rev, length, bad = call_all(sock_dir, [
        ("process_text", {"text": "abc", "operation": "reverse"}, {}),
        ("process_text", {"text": "abcd", "operation": "length"}, {}),
        ("process_text", {"text": "abc", "operation": "explode"}, {}),
    ])
    assert result_of(rev)["result"] == "cba"
    assert result_of(length)["result"] == 4
    assert not bad.success and bad.error.type == "ValueError" and "explode" in bad.error.message


def test_ml_and_binary_tools(sock_dir):
    data = b"\x00\x01hello\xff"
    ml, checksum, rev, comp, from_str = call_all(sock_dir, [
        ("ml_analyze_text", {"text": "a great and wonderful day"}, {}),
        ("process_binary", {"operation": "checksum"}, {"binary": {"data": data}}),
        ("process_binary", {"operation": "reverse"}, {"binary": {"data": data}}),
        ("process_binary", {"operation": "compress"}, {"binary": {"data": data}}),
        ("process_binary", {"data": "text", "operation": "length"}, {}),
    ])
    m = result_of(ml)
    assert m["sentiment"] == "positive" and m["word_count"] == 5
    c = result_of(checksum)
    assert c["checksum"] == hashlib.sha256(data).hexdigest() and c["size"] == len(data)
    assert rev.has_binary_result and rev.binary_result == data[::-1]
    assert zlib.decompress(comp.binary_result) == data
    assert result_of(from_str) == {"size": 4, "success": True}


def test_streaming_tools(sock_dir):
    data, pings, progress = call_all(sock_dir, [
        ("stream_data", {"count": 5}, {"stream": True}),
        ("ping_stream", {"count": 3}, {"stream": True}),
        ("stream_progress", {"steps": 4}, {"stream": True}),
    ])
    items = [serialization.loads(c.data) for c in data if c.data]
    assert [i["index"] for i in items] == [0, 1, 2, 3, 4]
    assert data[-1].is_final and not any(c.is_final for c in data[:-1])
    assert [serialization.loads(c.data)["ping"] for c in pings if c.data] == [0, 1, 2]
    steps = [serialization.loads(c.data) for c in progress]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert progress[-1].is_final and steps[-1]["status"] == "complete"
    assert all(s["elapsed_ms"] >= 0 for s in steps)


def test_concurrency_and_process_tools(sock_dir):
    conc, slept, pid, err_default, err_key, err_named, err_bad = call_all(sock_dir, [
        ("concurrent_demo", {"task_count": 3}, {}),
        ("sleep", {"ms": 1}, {}),
        ("get_pid", {}, {}),
        ("error_demo", {}, {}),
        ("error_demo", {"error_type": "key"}, {}),
        ("error_demo", {"error_type": "RuntimeError", "message": "custom"}, {}),
        ("error_demo", {"error_type": "banana"}, {}),
    ])
    c = result_of(conc)
    assert c["task_count"] == 3 and [r["result"] for r in c["results"]] == [0, 1, 4]
    assert result_of(slept) == {"slept_ms": 1, "pid": os.getpid()}
    assert result_of(pid) == {"pid": os.getpid()}
    # Upstream's default error_type is "generic": a plain Exception.
    assert err_default.error.type == "Exception"
    assert err_key.error.type == "KeyError"
    assert err_named.error.type == "RuntimeError" and err_named.error.message == "custom"
    assert err_bad.error.type == "ValueError" and "unknown error_type" in err_bad.error.message


def test_upstream_showcase_tools_sleep_task_and_serialization_demo(sock_dir):
    slept, shown = call_all(sock_dir, [
        ("sleep_task", {"duration_ms": 5, "task_number": 7}, {}),
        ("serialization_demo", {}, {}),
    ])
    s = result_of(slept)
    assert s["task_number"] == 7 and s["duration_ms"] == 5 and s["pid"] == os.getpid()
    assert s["completed_at"] - s["started_at"] >= 0.005
    d = result_of(shown)
    assert d["datetime"] == "2026-12-02T10:30:00+00:00" and d["date"] == "2026-12-02"
    assert d["decimal"] == "3.14159" and sorted(d["set"]) == [1, 2, 3]
    assert d["uuid"] == "12345678-1234-5678-1234-567812345678"
    assert d["model_dump"] == {"kind": "model", "fields": ["a", "b"]}
    assert d["to_dict"] == {"kind": "to_dict", "value": 1} and d["tolist"] == [1, 2, 3]
    assert d["unserializable"]["__ffi_unserializable__"] is True
