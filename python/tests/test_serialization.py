from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid

import pytest

from snakepit_bridge import serialization
from snakepit_bridge.serialization import decode_args, dumps, loads


def roundtrip(value):
    return loads(dumps(value))


def test_integers_stay_integers():
    out = roundtrip({"a": 1, "b": [2, 3], "c": 10**18})
    assert out == {"a": 1, "b": [2, 3], "c": 10**18}
    assert all(isinstance(v, int) for v in (out["a"], out["c"]))


def test_integers_beyond_64_bits_survive_both_ways():
    # Out: a marker the native core turns into an Elixir integer; the edges
    # of the 64-bit ranges stay plain numbers.
    big = 2**70 + 1
    assert json.loads(dumps({"x": big, "neg": -big})) == {
        "x": {"__snakepit_int__": str(big)},
        "neg": {"__snakepit_int__": str(-big)},
    }
    assert roundtrip({"x": big, "neg": -big}) == {"x": big, "neg": -big}
    assert roundtrip([2**64 - 1, -(2**63)]) == [2**64 - 1, -(2**63)]
    # In: Elixir writes the digits.
    assert isinstance(loads(b'{"x": 123456789012345678901234567890}')["x"], int)
    assert loads(b"[-123456789012345678901234567890]") == [-123456789012345678901234567890]


def test_floats_and_nonfinite():
    assert roundtrip(1.5) == 1.5
    # Out: markers (the atoms :nan, :infinity, :neg_infinity in Elixir),
    # never a silent null; a real None stays null.
    assert json.loads(dumps({"n": float("nan"), "i": float("inf"), "m": [-float("inf")], "z": None})) == {
        "n": {"__snakepit_float__": "nan"},
        "i": {"__snakepit_float__": "infinity"},
        "m": [{"__snakepit_float__": "neg_infinity"}],
        "z": None,
    }
    # In: what Elixir writes for those atoms.
    back = loads(b'{"n": NaN, "i": Infinity, "m": -Infinity}')
    assert math.isnan(back["n"]) and back["i"] == math.inf and back["m"] == -math.inf


def test_nonfinite_values_inside_numpy_arrays_are_marked():
    import numpy as np

    assert json.loads(dumps({"a": np.array([1.0, np.nan])})) == {"a": [1.0, {"__snakepit_float__": "nan"}]}
    out = roundtrip([float("nan"), 2**100])
    assert math.isnan(out[0]) and out[1] == 2**100


def test_unicode_and_nesting():
    value = {"s": "héllo ✓", "nested": {"list": [None, True, False, {"k": "v"}]}}
    assert roundtrip(value) == value


def test_non_string_keys_become_strings():
    assert roundtrip({1: "a", 2.5: "b"}) == {"1": "a", "2.5": "b"}


def test_converters_in_documented_order():
    class WithModelDump:
        def model_dump(self):
            return {"kind": "pydantic"}

        def to_dict(self):  # pragma: no cover - model_dump wins
            return {"kind": "to_dict"}

    class WithToDict:
        def to_dict(self):
            return {"kind": "to_dict"}

    class WithToList:
        def tolist(self):
            return [1, 2, 3]

    Point = collections.namedtuple("Point", "x y")
    out = roundtrip(
        {
            "m": WithModelDump(),
            "d": WithToDict(),
            "l": WithToList(),
            "t": datetime.datetime(2024, 1, 11, 10, 30),
            "date": datetime.date(2024, 1, 11),
        }
    )
    assert out["m"] == {"kind": "pydantic"}
    assert out["d"] == {"kind": "to_dict"}
    assert out["l"] == [1, 2, 3]
    assert out["t"].startswith("2024-01-11T10:30")
    assert out["date"] == "2024-01-11"
    # namedtuples: a dict via _asdict on the orjson path, a list on the stdlib path
    assert roundtrip(Point(1, 2)) in ({"x": 1, "y": 2}, [1, 2])


def test_dataclass_enum_set_uuid():
    @dataclasses.dataclass
    class D:
        a: int
        b: str

    class Color(enum.Enum):
        RED = "red"

    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    out = roundtrip({"d": D(1, "x"), "c": Color.RED, "s": {3, 1, 2}, "u": u})
    assert out == {"d": {"a": 1, "b": "x"}, "c": "red", "s": [1, 2, 3], "u": str(u)}


def test_numpy_values_convert():
    np = pytest.importorskip("numpy")
    out = roundtrip({"arr": np.arange(3), "scalar": np.int64(7), "f": np.float32(0.5)})
    assert out == {"arr": [0, 1, 2], "scalar": 7, "f": 0.5}


class Opaque:
    def __repr__(self):
        return "Opaque(password=hunter2, token='abc123', data=" + "x" * 3000 + ")"


def test_unserializable_marker_default(monkeypatch):
    monkeypatch.delenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", raising=False)
    out = roundtrip({"o": Opaque(), "dec": decimal.Decimal("1.5")})
    assert out["o"] == {"__ffi_unserializable__": True, "__type__": f"{__name__}.Opaque"}
    # A Decimal is not unserializable: its exact digits, as upstream sends it.
    assert out["dec"] == "1.5"


def test_unserializable_marker_repr_truncated(monkeypatch):
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_truncated")
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN", "40")
    marker = roundtrip(Opaque())
    assert marker["__ffi_unserializable__"] is True
    assert marker["__type__"].endswith("Opaque")
    assert len(marker["__repr__"]) == 40
    assert marker["__repr__"].startswith("Opaque(password=hunter2")


def test_unserializable_marker_repr_redacted(monkeypatch):
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_redacted_truncated")
    marker = roundtrip(Opaque())
    assert "hunter2" not in marker["__repr__"]
    assert "abc123" not in marker["__repr__"]
    assert len(marker["__repr__"]) == 500  # default maxlen


def test_repr_maxlen_is_capped(monkeypatch):
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "repr_truncated")
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN", "999999")
    assert len(roundtrip(Opaque())["__repr__"]) == 2000


def test_type_mode_gives_placeholder_string(monkeypatch):
    monkeypatch.setenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", "type")
    assert roundtrip(Opaque()) == f"<unserializable {__name__}.Opaque>"


def test_broken_converter_falls_back_to_marker(monkeypatch):
    monkeypatch.delenv("SNAKEPIT_UNSERIALIZABLE_DETAIL", raising=False)

    class Broken:
        def to_dict(self):
            raise RuntimeError("nope")

    assert roundtrip(Broken())["__ffi_unserializable__"] is True


def test_stdlib_path_matches(monkeypatch):
    monkeypatch.setattr(serialization, "_orjson", None)
    assert loads(dumps({"a": 1, "big": 2**80, "t": datetime.date(2024, 1, 1)})) == {
        "a": 1, "big": 2**80, "t": "2024-01-01"
    }
    assert json.loads(dumps({"n": float("nan")})) == {"n": {"__snakepit_float__": "nan"}}
    assert loads(dumps(Opaque()))["__ffi_unserializable__"] is True


def test_decode_args():
    assert decode_args(b"") == {}
    assert decode_args(b"  ") == {}
    assert decode_args(b"null") == {}
    assert decode_args(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValueError, match="JSON object"):
        decode_args(b"[1, 2]")
    with pytest.raises(ValueError):
        decode_args(b"{not json")
