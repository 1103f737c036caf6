"""The nesting and integer-digit limits of the worker's serializer: values
up to the limits travel both ways, deeper or longer ones give a
SerializationError naming the limit, and nothing crashes however deep the
input (100,000 levels here)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from snakepit_bridge import serialization as s
from snakepit_bridge.errors import SerializationError


@pytest.fixture(autouse=True)
def default_limits(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv(s.DEPTH_ENV, raising=False)
    monkeypatch.delenv(s.DIGITS_ENV, raising=False)
    saved_digits = sys.get_int_max_str_digits()
    s.apply_limits()
    yield
    sys.set_int_max_str_digits(saved_digits)


def maps(depth: int) -> Any:
    """``depth`` dicts nested, around 1 (built without recursion)."""
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


def lists(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("build", [maps, lists])
@pytest.mark.parametrize("depth", [1, 200, 254, 255, 999, 1000])
def test_values_up_to_the_limit_travel_both_ways(build: Any, depth: int) -> None:
    value = build(depth)
    assert s.loads(s.dumps(value)) == value


@pytest.mark.parametrize("build", [maps, lists])
@pytest.mark.parametrize("depth", [1001, 5000, 100_000])
def test_deeper_values_are_refused_naming_the_limit_and_the_path(build: Any, depth: int) -> None:
    with pytest.raises(SerializationError) as err:
        s.dumps({"x": build(depth)})
    message = str(err.value)
    assert "max_nesting_depth (1000)" in message
    assert message.startswith("a value at .x")
    assert "levels>" in message


def test_deep_json_is_refused_not_a_crash() -> None:
    for depth in (1025, 5000, 100_000):
        with pytest.raises(SerializationError, match=r"max_nesting_depth \(1000\)"):
            s.loads(b"[" * depth + b"]" * depth)
    # The wrappers' slack: a value at the limit with number markers inside.
    value = lists(999)
    inner = value
    for _ in range(998):
        inner = inner[0]
    inner[0] = 10**30
    assert s.loads(s.dumps(value)) == value


def test_a_lower_limit_applies_to_orjson_output_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(s.DEPTH_ENV, "10")
    s.apply_limits()
    assert s.loads(s.dumps(maps(10))) == maps(10)
    with pytest.raises(SerializationError, match=r"max_nesting_depth \(10\)"):
        s.dumps(maps(11))
    # Zero-copy markers count as scalars.
    marker = {s.ZERO_COPY_KEY: {"kind": "dlpack", "bytes": 0, "shape": [0]}}
    at_limit = [[[[[[[[[[marker]]]]]]]]]]
    assert s.loads(s.dumps(at_limit)) == at_limit


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert s.json_depth(b'["[[[\\"[", {"a": [[]]}]') == 4
    assert s.json_depth(b'"]]]"') == 0
    assert s.json_depth(json.dumps(lists(300)).encode()) == 300


def test_integers_up_to_the_digit_limit_travel_both_ways() -> None:
    for value in (10**4299, -(10**4299), 2**64, -(2**63) - 1):
        assert s.loads(s.dumps({"n": value})) == {"n": value}
    # Elixir sends big integers as plain digits.
    assert s.loads(b'{"n": ' + b"9" * 4300 + b"}")["n"] == 10**4300 - 1


def test_longer_integers_are_refused_both_ways() -> None:
    for value in (10**4300, -(10**4300), 10**1_300_000):
        with pytest.raises(SerializationError, match=r"max_integer_digits \(4300\)"):
            s.dumps({"n": value})
    with pytest.raises(SerializationError, match=r"an integer of 4301 digits"):
        s.loads(b'{"n": ' + b"9" * 4301 + b"}")
    with pytest.raises(SerializationError, match=r"max_integer_digits"):
        s.loads(b'{"n": {"__snakepit_int__": "' + b"9" * 4301 + b'"}}')


def test_what_a_tool_does_to_the_int_setting_changes_nothing() -> None:
    sys.set_int_max_str_digits(640)
    assert s.loads(s.dumps([10**4000])) == [10**4000]
    sys.set_int_max_str_digits(0)
    with pytest.raises(SerializationError):
        s.dumps(10**5000)


def test_apply_limits_reads_the_environment_and_sets_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(s.DEPTH_ENV, "1500")
    monkeypatch.setenv(s.DIGITS_ENV, "5000")
    assert s.apply_limits() == (1500, 5000)
    assert sys.getrecursionlimit() >= 1500 + s.WRAPPER_SLACK + 1000
    assert sys.get_int_max_str_digits() == 5000
    monkeypatch.setenv(s.DEPTH_ENV, "999999")
    monkeypatch.setenv(s.DIGITS_ENV, "junk")
    assert s.apply_limits() == (s.MAX_NESTING_DEPTH_CEILING, s.DEFAULT_MAX_INTEGER_DIGITS)


def test_deep_values_through_the_slow_path_convert_odd_objects() -> None:
    # More than orjson's 254 levels, with values orjson cannot write.
    value = lists(600)
    inner = value
    for _ in range(599):
        inner = inner[0]
    inner[0] = {"big": 2**70, "nan": float("nan"), "set": {3, 1}}
    back = s.loads(s.dumps(value))
    for _ in range(600):
        back = back[0]
    assert back["big"] == 2**70 and back["set"] == [1, 3] and back["nan"] != back["nan"]
