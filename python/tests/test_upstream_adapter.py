"""An adapter in upstream Snakepit's style loads and serves every tool."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import request, result_of, run, running_worker

FIXTURES = Path(__file__).resolve().parents[2] / "test" / "fixtures" / "python"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

from upstream_style import UpstreamStyleAdapter  # noqa: E402


def test_decorated_tools_keep_required_variables_as_metadata() -> None:
    tools = UpstreamStyleAdapter().get_tools()
    assert set(tools) == {"add", "whoami", "echo"}
    assert json.loads(tools["add"].metadata["required_variables"]) == ["precision"]
    assert json.loads(tools["echo"].metadata["required_variables"]) == []


def test_execute_tool_comes_first_and_call_tool_reaches_decorated_tools(sock_dir: Path) -> None:
    async def go() -> None:
        async with running_worker(UpstreamStyleAdapter(), sock_dir) as (_, stub):
            assert result_of(await stub.ExecuteTool(request("multiply", {"a": 6, "b": 7}))) == {"product": 42}
            assert result_of(await stub.ExecuteTool(request("power", {"base": 3}))) == {"result": 9}
            assert result_of(await stub.ExecuteTool(request("shout", {"text": "hi"}))) == {"text": "HI!"}
            assert result_of(await stub.ExecuteTool(request("add", {"a": 1, "b": 2}))) == {"sum": 3}
            assert result_of(await stub.ExecuteTool(request("echo", {"x": [1]}))) == {"x": [1]}
            who = result_of(await stub.ExecuteTool(request("whoami", session_id="s-42")))
            assert who == {"session_id": "s-42", "routed": 6}
            missing = await stub.ExecuteTool(request("nope", {}))
            assert not missing.success and missing.error.type == "ToolNotFoundError"

    run(go())
