"""Shared test helpers: in-process workers, worker subprocesses and a fake
ElixirBridge server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import grpc

from snakepit_bridge import serialization
from snakepit_bridge._internal.worker import Worker
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc

PYTHON_DIR = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent

# Generous upper bounds for things that normally take milliseconds. Tests wait
# for events/lines, never for fixed durations; these only stop a broken test
# from hanging forever.
WAIT_S = 15.0


def request(
    tool: str,
    args: Any = None,
    *,
    session_id: str = "",
    binary: dict[str, bytes] | None = None,
    metadata: dict[str, str] | None = None,
    timeout_ms: int = 0,
) -> Any:
    req = pb.ExecuteToolRequest(
        tool_name=tool,
        session_id=session_id,
        args_json=b"" if args is None else serialization.dumps(args),
        timeout_ms=timeout_ms,
    )
    for key, value in (binary or {}).items():
        req.binary_parameters[key] = value
    for key, value in (metadata or {}).items():
        req.metadata[key] = value
    return req


def result_of(response: Any) -> Any:
    assert response.success, f"{response.error.type}: {response.error.message}\n{response.error.traceback}"
    if response.has_binary_result:
        return response.binary_result
    return serialization.loads(response.result_json)


@contextlib.asynccontextmanager
async def running_worker(
    adapter: Any, sock_dir: Path, *, name: str = "w.sock", **kwargs: Any
) -> AsyncIterator[tuple[Worker, Any]]:
    """Run a Worker for ``adapter`` on a unix socket; yield (worker, aio stub)."""
    worker = Worker(adapter, f"unix:{sock_dir / name}", worker_id=kwargs.pop("worker_id", "test-worker"), **kwargs)
    worker.bind()
    await worker.start()
    channel = grpc.aio.insecure_channel(worker.address)
    try:
        yield worker, pb_grpc.BridgeServiceStub(channel)
    finally:
        await channel.close()
        await worker.stop(grace=0.5)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------ subprocess workers


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(PYTHON_DIR), str(TESTS_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


async def spawn_worker(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "snakepit_bridge.server",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=worker_env(env),
        cwd=str(PYTHON_DIR),
    )


async def read_handshake(proc: asyncio.subprocess.Process) -> str:
    """Return the first stdout line starting with SNAKEPIT_ ("" at EOF)."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT_S)
        if not line:
            return ""
        text = line.decode().rstrip("\n")
        if text.startswith("SNAKEPIT_"):
            return text


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """Wait for exit; return (code, rest of stdout, stderr)."""
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    return proc.returncode if proc.returncode is not None else -999, out.decode(), err.decode()


# ------------------------------------------------------------------ fake ElixirBridge


class FakeElixirBridge(pb_grpc.ElixirBridgeServicer):
    """Stands in for the Rust core's bridge server."""

    def __init__(self) -> None:
        self.registered: list[Any] = []
        self.registered_event = asyncio.Event()
        self.calls: list[Any] = []
        self.telemetry: list[Any] = []
        self.telemetry_event = asyncio.Event()
        self.controls: asyncio.Queue[Any] = asyncio.Queue()
        self.tools = {
            "add": lambda p: {"sum": p["a"] + p["b"]},
            "parse_json": lambda p: serialization.loads(p["json_string"]),
            "bytes_len": None,  # handled specially (binary parameters)
            "fail": None,
        }

    async def RegisterTools(self, request: Any, context: Any) -> Any:
        self.registered.append(request)
        self.registered_event.set()
        response = pb.RegisterToolsResponse(success=True)
        for spec in request.tools:
            response.tool_ids[spec.name] = f"py:{spec.name}"
        return response

    async def GetExposedElixirTools(self, request: Any, context: Any) -> Any:
        response = pb.GetExposedElixirToolsResponse()
        for name in self.tools:
            response.tools.add(name=name, description=f"fake {name}")
        return response

    async def ExecuteElixirTool(self, request: Any, context: Any) -> Any:
        self.calls.append(request)
        params = serialization.decode_args(request.args_json)
        if request.tool_name == "fail":
            return pb.ExecuteToolResponse(
                success=False,
                error=pb.ToolError(type="ArgumentError", message="elixir says no", kind="tool"),
            )
        if request.tool_name == "bytes_len":
            data = request.binary_parameters["data"]
            return pb.ExecuteToolResponse(success=True, result_json=serialization.dumps({"len": len(data)}))
        if request.tool_name == "echo_binary":
            return pb.ExecuteToolResponse(success=True, has_binary_result=True, binary_result=b"\x00\x01")
        handler = self.tools.get(request.tool_name)
        if handler is None:
            return pb.ExecuteToolResponse(
                success=False,
                error=pb.ToolError(
                    type="ToolNotFoundError", message=f"no tool {request.tool_name}", kind="unknown_tool"
                ),
            )
        return pb.ExecuteToolResponse(success=True, result_json=serialization.dumps(handler(params)))

    async def StreamTelemetry(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async def pump_controls() -> AsyncIterator[Any]:
            while True:
                yield await self.controls.get()

        async def read_events() -> None:
            async for event in request_iterator:
                # Events travel in envelopes (TelemetryEvent.batch).
                self.telemetry.extend(event.batch or [event])
                self.telemetry_event.set()

        reader = asyncio.ensure_future(read_events())
        try:
            # As Snakepit's bridge does: the worker learns at once whether to send.
            yield pb.TelemetryControl(forwarding=pb.TelemetryForwarding(active=True))
            async for control in pump_controls():
                yield control
        finally:
            reader.cancel()


@contextlib.asynccontextmanager
async def fake_bridge(sock_dir: Path, name: str = "bridge.sock") -> AsyncIterator[tuple[FakeElixirBridge, str]]:
    fake = FakeElixirBridge()
    server = grpc.aio.server()
    pb_grpc.add_ElixirBridgeServicer_to_server(fake, server)
    address = f"unix:{sock_dir / name}"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield fake, address
    finally:
        await server.stop(0)
