"""JSON encoding and decoding for tool arguments, results and stream chunks.

Rules:

* Integers stay integers in both directions, however large (orjson is used
  when it is installed, but it cannot hold integers beyond 64 bits, so those
  payloads go through the standard library instead).
* Values JSON cannot hold natively are converted through the first of
  ``model_dump()``, ``to_dict()``, ``_asdict()``, ``tolist()`` or
  ``isoformat()`` that the object has (plus dataclasses, enums, sets, UUIDs, and Decimals as strings).
* Anything else becomes an *unserializable marker*::

      {"__ffi_unserializable__": true, "__type__": "module.Class"}

  ``SNAKEPIT_UNSERIALIZABLE_DETAIL`` selects how much is said about the
  object: ``none`` (default, the marker above), ``type`` (a placeholder string
  naming the type instead of the marker), ``repr_truncated`` (marker plus
  ``"__repr__"``) or ``repr_redacted_truncated`` (marker plus a ``"__repr__"``
  with common secrets masked). ``SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN`` bounds
  the repr (default 500, at most 2000).
* Numbers JSON cannot hold are written as marker objects the native core
  turns into Elixir terms: an integer beyond 64 bits as
  ``{"__snakepit_int__": "<digits>"}`` (an Elixir integer), a non-finite
  float as ``{"__snakepit_float__": "nan" | "infinity" | "neg_infinity"}``
  (the atoms ``:nan``, ``:infinity``, ``:neg_infinity``). The other way,
  Elixir sends those atoms as ``NaN`` / ``Infinity`` / ``-Infinity``, which
  ``loads`` reads as floats, and big integers as plain digits.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import json
import math
import os
import re
import uuid
from typing import Any

try:  # optional fast path
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when orjson is absent
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "UNSERIALIZABLE_KEY",
    "dumps",
    "loads",
    "to_jsonable",
    "unserializable_marker",
    "is_unserializable_marker",
    "using_orjson",
]

UNSERIALIZABLE_KEY = "__ffi_unserializable__"
TYPE_KEY = "__type__"
REPR_KEY = "__repr__"

DETAIL_ENV = "SNAKEPIT_UNSERIALIZABLE_DETAIL"
MAXLEN_ENV = "SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN"
DEFAULT_REPR_MAXLEN = 500
MAX_REPR_MAXLEN = 2000

_DETAIL_MODES = ("none", "type", "repr_truncated", "repr_redacted_truncated")

# A run of 19+ digits may be an integer beyond 64 bits, which orjson would
# silently turn into a float. Such payloads are decoded by the stdlib.
_LONG_DIGITS = re.compile(rb"\d{19,}")

INT_KEY = "__snakepit_int__"
FLOAT_KEY = "__snakepit_float__"
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

_CONVERTER_METHODS = ("model_dump", "to_dict", "_asdict", "tolist", "isoformat")


def using_orjson() -> bool:
    """True when the orjson fast path is available."""
    return _orjson is not None


# --------------------------------------------------------------------- markers


def _type_path(obj: Any) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", None) or "builtins"
    name = getattr(cls, "__qualname__", None) or cls.__name__
    return f"{module}.{name}"


def _detail_mode() -> str:
    mode = os.environ.get(DETAIL_ENV, "none").strip().lower() or "none"
    return mode if mode in _DETAIL_MODES else "none"


def _repr_maxlen() -> int:
    raw = os.environ.get(MAXLEN_ENV, "")
    try:
        value = int(raw) if raw.strip() else DEFAULT_REPR_MAXLEN
    except ValueError:
        value = DEFAULT_REPR_MAXLEN
    return max(0, min(value, MAX_REPR_MAXLEN))


_SECRET_KEYS = (
    r"password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|client[_-]?secret|auth|authorization|credentials?|session[_-]?id|cookie"
)
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # key=value, key: value, 'key': 'value', "key"="value"
    (
        re.compile(
            rf"""(?ix)
            (["']?\b[\w-]*(?:{_SECRET_KEYS})[\w-]*["']?\s*[:=]\s*)
            (?:"[^"]*"|'[^']*'|[^\s,;)}}\]]+)
            """
        ),
        r"\1<REDACTED>",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 <REDACTED>"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "<REDACTED>"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "<REDACTED>"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"), "<REDACTED>"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"), "<REDACTED>"),
    (re.compile(r"(?i)(://[^:/@\s]+:)[^@/\s]+@"), r"\1<REDACTED>@"),
)


def redact(text: str) -> str:
    """Best-effort masking of common secret patterns (not a security boundary)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def _truncate(text: str, maxlen: int) -> str:
    if len(text) <= maxlen:
        return text
    if maxlen <= 3:
        return text[:maxlen]
    return text[: maxlen - 3] + "..."


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break encoding
        return f"<repr failed: {type(exc).__name__}>"


def unserializable_marker(obj: Any) -> Any:
    """The value that stands in for ``obj`` when it cannot be converted."""
    type_path = _type_path(obj)
    mode = _detail_mode()
    if mode == "type":
        return f"<unserializable {type_path}>"
    marker: dict[str, Any] = {UNSERIALIZABLE_KEY: True, TYPE_KEY: type_path}
    if mode in ("repr_truncated", "repr_redacted_truncated"):
        text = _safe_repr(obj)
        if mode == "repr_redacted_truncated":
            text = redact(text)
        marker[REPR_KEY] = _truncate(text, _repr_maxlen())
    return marker


def is_unserializable_marker(value: Any) -> bool:
    return isinstance(value, dict) and value.get(UNSERIALIZABLE_KEY) is True


# ------------------------------------------------------------------ conversion


def _convert(obj: Any) -> Any:
    """Convert one non-JSON object to something JSON can hold (one level)."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (set, frozenset)):
        items = list(obj)
        try:
            items.sort()
        except TypeError:
            pass
        return items
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        # A Decimal as its exact digits, as upstream Snakepit sends it.
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return unserializable_marker(obj)
    for name in _CONVERTER_METHODS:
        method = getattr(type(obj), name, None)
        if method is None or not callable(method):
            continue
        try:
            return getattr(obj, name)()
        except Exception:  # noqa: BLE001 - fall through to the next converter
            continue
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        try:
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        except Exception:  # noqa: BLE001
            pass
    return unserializable_marker(obj)


def _default(obj: Any) -> Any:
    converted = _convert(obj)
    if converted is obj:  # pragma: no cover - defensive: avoid infinite recursion
        return unserializable_marker(obj)
    return converted


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """Recursively turn ``value`` into plain JSON types (dict/list/str/int/float/bool/None).

    Used on the slow path and wherever a plain structure is needed.
    """
    if _depth > 200:
        return unserializable_marker(value)
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, enum.Enum):
            return to_jsonable(value.value, _depth + 1)
        if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
            return {INT_KEY: str(value)}
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _float_marker(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out[_key_to_str(key)] = to_jsonable(item, _depth + 1)
        return out
    if isinstance(value, (list, tuple)) and not hasattr(value, "_asdict"):
        return [to_jsonable(item, _depth + 1) for item in value]
    converted = _convert(value)
    if is_unserializable_marker(converted) or isinstance(converted, str):
        return converted
    return to_jsonable(converted, _depth + 1)


def _float_marker(value: float) -> dict[str, str]:
    if math.isnan(value):
        return {FLOAT_KEY: "nan"}
    return {FLOAT_KEY: "infinity" if value > 0 else "neg_infinity"}


def _may_hold_nonfinite(value: Any, _depth: int = 0) -> bool:
    """Whether ``value`` may hold a NaN or an infinity (which orjson writes as
    ``null``). Objects orjson converted itself are assumed to."""
    if value is None or isinstance(value, (bool, int, str)):
        return False
    if isinstance(value, float):
        return not math.isfinite(value)
    if _depth > 200:
        return True
    if isinstance(value, dict):
        return any(_may_hold_nonfinite(item, _depth + 1) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_may_hold_nonfinite(item, _depth + 1) for item in value)
    return True


def _key_to_str(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, (int, float)):
        return json.dumps(key)
    if isinstance(key, enum.Enum):
        return _key_to_str(key.value)
    return str(key)


# ------------------------------------------------------------------ encode/decode

_ORJSON_OPTS = 0
if _orjson is not None:
    _ORJSON_OPTS = _orjson.OPT_NON_STR_KEYS | _orjson.OPT_SERIALIZE_NUMPY


def _stdlib_dumps(value: Any) -> bytes:
    text = json.dumps(to_jsonable(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes (never raises for odd objects)."""
    if _orjson is not None:
        try:
            out: bytes = _orjson.dumps(value, default=_default, option=_ORJSON_OPTS)
        except TypeError:
            # Integers beyond 64 bits, tuple subclasses, odd keys: slow path.
            pass
        else:
            # orjson writes NaN and infinities as null: only output with a
            # null can hold one.
            if b"null" not in out or not _may_hold_nonfinite(value):
                return out
    return _stdlib_dumps(value)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON, keeping integers of any size as ``int``."""
    if isinstance(data, str):
        raw = data.encode("utf-8")
    else:
        raw = bytes(data)
    value = _parse(raw)
    if _MARKED_NUMBER in raw:
        value = _unmark_numbers(value)
    return value


_MARKED_NUMBER = b'"__snakepit_'


def _parse(raw: bytes) -> Any:
    if _orjson is not None and not _LONG_DIGITS.search(raw):
        try:
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # NaN / Infinity from Elixir, or not JSON: the stdlib decides
    return json.loads(raw)


_FLOATS = {"nan": math.nan, "infinity": math.inf, "neg_infinity": -math.inf}


def _unmark_numbers(value: Any) -> Any:
    """``value`` with the number markers ``dumps`` writes turned back into
    numbers, so ``loads(dumps(x)) == x`` in Python too."""
    if isinstance(value, dict):
        if len(value) == 1:
            (key, item), = value.items()
            if key == INT_KEY and isinstance(item, str):
                return int(item)
            if key == FLOAT_KEY and item in _FLOATS:
                return _FLOATS[item]
        return {key: _unmark_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unmark_numbers(item) for item in value]
    return value


def decode_args(data: bytes) -> dict[str, Any]:
    """Decode a tool's ``args_json``: empty means ``{}``; must be an object."""
    if not data or not data.strip():
        return {}
    value = loads(data)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(
            f"tool arguments must be a JSON object, got {type(value).__name__}"
        )
    return value
