from __future__ import annotations

from typing import Any

import pytest

from snakepit_bridge import BaseAdapter, tool
from snakepit_bridge.errors import ArgumentBindingError
from snakepit_bridge.tools import discover_tools


class Sample(BaseAdapter):
    @tool
    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Longer explanation that is not part of the description.

        Args:
            a: the first number.
            b: the second
                number, continued.
        """
        return a + b

    @tool(description="explicit description", metadata={"category": "demo"})
    def described(self, x: int = 3) -> int:
        """Docstring that loses to the explicit description."""
        return x

    @tool
    def whole(self, params):
        return params

    @tool
    def whole_dict(self, options: dict = None):  # type: ignore[assignment]
        return options

    @tool
    def optional_one(self, count: int = 5):
        return count

    @tool
    def flexible(self, name: str, **rest: Any):
        return {"name": name, "rest": rest}

    @tool(name="renamed")
    def original_name(self):
        return "ok"

    @tool
    def gen(self, n: int = 2):
        yield from range(n)

    @tool
    async def agen(self):
        yield 1

    @tool
    def with_stream(self, items: list, stream):
        for item in items:
            stream.send(item)

    @tool
    async def coro(self, x: int):
        return x

    def not_a_tool(self):
        return None


@pytest.fixture
def tools():
    return discover_tools(Sample())


def test_discovery(tools):
    assert set(tools) == {
        "add",
        "described",
        "whole",
        "whole_dict",
        "optional_one",
        "flexible",
        "renamed",
        "gen",
        "agen",
        "with_stream",
        "coro",
    }


def test_description_falls_back_to_docstring(tools):
    assert tools["add"].description == "Add two integers."
    assert tools["described"].description == "explicit description"
    assert tools["whole"].description == ""


def test_streaming_detection(tools):
    assert tools["gen"].supports_streaming and tools["gen"].produces_stream
    assert tools["agen"].supports_streaming
    assert tools["with_stream"].supports_streaming and tools["with_stream"].wants_stream
    assert not tools["add"].supports_streaming
    assert tools["coro"].is_coroutine


def test_binding_by_name(tools):
    assert tools["add"].bind({"a": 1, "b": 2}) == ([], {"a": 1, "b": 2})


def test_missing_required_argument_names_tool_and_parameter(tools):
    with pytest.raises(ArgumentBindingError) as info:
        tools["add"].bind({"a": 1})
    assert str(info.value) == "tool 'add' is missing required argument 'b'"
    assert isinstance(info.value, TypeError)


def test_missing_several_arguments(tools):
    with pytest.raises(ArgumentBindingError, match="missing required arguments 'a', 'b'"):
        tools["add"].bind({})


def test_unexpected_argument(tools):
    with pytest.raises(ArgumentBindingError) as info:
        tools["add"].bind({"a": 1, "b": 2, "c": 3})
    assert "tool 'add' got unexpected argument 'c'" in str(info.value)
    assert "accepted: a, b" in str(info.value)


def test_missing_and_unexpected_together(tools):
    with pytest.raises(ArgumentBindingError, match="missing required argument 'b'; got unexpected argument 'c'"):
        tools["add"].bind({"a": 1, "c": 3})


def test_single_required_parameter_receives_whole_dict(tools):
    assert tools["whole"].bind({"x": 1, "y": 2}) == ([], {"params": {"x": 1, "y": 2}})
    assert tools["whole"].bind({}) == ([], {"params": {}})
    # a matching key binds by name instead
    assert tools["whole"].bind({"params": 5}) == ([], {"params": 5})


def test_single_dict_annotated_optional_parameter_receives_whole_dict(tools):
    assert tools["whole_dict"].bind({"a": 1}) == ([], {"options": {"a": 1}})
    assert tools["whole_dict"].bind({}) == ([], {})


def test_single_optional_scalar_parameter_keeps_default(tools):
    assert tools["optional_one"].bind({}) == ([], {})
    assert tools["optional_one"].bind({"count": 2}) == ([], {"count": 2})
    with pytest.raises(ArgumentBindingError, match="unexpected argument 'other'"):
        tools["optional_one"].bind({"other": 1})


def test_var_keyword_collects_extras(tools):
    assert tools["flexible"].bind({"name": "n", "x": 1}) == ([], {"name": "n", "x": 1})


def test_stream_parameter_gets_stream_object(tools):
    marker = object()
    positional, keywords = tools["with_stream"].bind({"items": [1]}, marker)
    assert keywords == {"items": [1], "stream": marker}


def test_parameter_specs(tools):
    spec = tools["add"].to_spec_dict()
    assert spec["name"] == "add"
    assert spec["parameters"] == [
        {"name": "a", "type": "int", "required": True, "description": "the first number.", "default_json": ""},
        {
            "name": "b",
            "type": "int",
            "required": True,
            "description": "the second number, continued.",
            "default_json": "",
        },
    ]
    described = tools["described"].to_proto()
    assert described.parameters[0].default_json == "3"
    assert not described.parameters[0].required
    assert dict(described.metadata) == {"category": "demo"}
    # the stream parameter is not advertised
    assert [p["name"] for p in tools["with_stream"].parameter_specs()] == ["items"]


def test_legacy_execute_prefix_methods_are_tools_when_no_tool_decorator():
    class Legacy:
        def execute_load(self, args):
            return args

        def helper(self):
            return None

    found = discover_tools(Legacy())
    assert list(found) == ["load"]
    assert found["load"].bind({"path": "x"}) == ([], {"args": {"path": "x"}})


def test_tools_are_inherited_and_overridable():
    class Base(BaseAdapter):
        @tool
        def one(self):
            return 1

        @tool
        def two(self):
            return 2

    class Child(Base):
        @tool(description="overridden")
        def two(self):
            return 22

    found = Child().get_tools()
    assert set(found) == {"one", "two"}
    assert found["two"].description == "overridden"
    assert found["two"].func() == 22
