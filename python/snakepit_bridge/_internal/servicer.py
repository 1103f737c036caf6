"""The BridgeService implementation served by every worker (grpc.aio)."""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator

from .. import serialization
from ..generated import snakepit_bridge_pb2 as pb
from ..generated import snakepit_bridge_pb2_grpc as pb_grpc
from . import auth, tool_streams
from .runtime import ToolRunner

log = logging.getLogger("snakepit_bridge.servicer")

__all__ = ["BridgeServicer"]


def _now_us() -> int:
    return time.time_ns() // 1000


class BridgeServicer(pb_grpc.BridgeServiceServicer):
    """Answers the Rust core's calls for one worker. Every method first
    refuses calls without the VM's secret (:mod:`snakepit_bridge.auth`)."""

    def __init__(self, runner: ToolRunner, worker_id: str = "", watchdog: Any = None):
        self.runner = runner
        self.worker_id = worker_id
        self.watchdog = watchdog

    async def Ping(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        return pb.PingResponse(message=request.message, server_time_us=_now_us(), worker_id=self.worker_id)

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        if self.watchdog is not None:
            self.watchdog.beat()
        return pb.HeartbeatResponse(ok=True, timestamp_us=_now_us(), status="ok")

    async def ExecuteTool(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        return await self.runner.execute(request)

    async def CancelTool(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        wait_s = max(request.wait_ms, 0) / 1000.0
        return pb.CancelToolResponse(state=await self.runner.cancel(request.request_id, wait_s))

    async def ExecuteStreamingTool(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await auth.refuse_unless_valid(context)
        async for chunk in tool_streams.stream(self.runner, request):
            yield chunk

    async def InitializeSession(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        if not request.session_id:
            return pb.InitializeSessionResponse(success=False, error_message="session_id is required")
        try:
            config = serialization.loads(request.config_json) if request.config_json else {}
        except ValueError as exc:
            return pb.InitializeSessionResponse(success=False, error_message=f"config_json is not valid JSON: {exc}")
        if config is None:
            config = {}
        if not isinstance(config, dict):
            config = {"config": config}
        self.runner.sessions.initialize(request.session_id, config)
        response = pb.InitializeSessionResponse(success=True)
        response.tools.extend(self.runner.tool_specs())
        return response

    async def CleanupSession(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        removed = self.runner.sessions.remove(request.session_id)
        return pb.CleanupSessionResponse(success=True, resources_cleaned=1 if removed else 0)

    async def GetSession(self, request: Any, context: Any) -> Any:
        await auth.refuse_unless_valid(context)
        session = self.runner.sessions.get(request.session_id)
        if session is None:
            return pb.GetSessionResponse(found=False, session_id=request.session_id)
        return pb.GetSessionResponse(
            found=True,
            session_id=session.session_id,
            metadata_json=serialization.dumps(session.metadata),
            created_at_ms=session.created_at_ms,
            last_accessed_ms=session.last_accessed_ms,
            tool_count=len(self.runner.tools),
        )
