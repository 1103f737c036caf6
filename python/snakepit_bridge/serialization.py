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

Limits, the same as the VM's (``SNAKEPIT_MAX_NESTING_DEPTH``,
``SNAKEPIT_MAX_INTEGER_DIGITS``, given to every worker; see
``Snakepit.Defaults``):

* Values may nest ``max_nesting_depth`` deep (default 1000): dicts, lists
  and tuples count one level each, the outermost being 1; scalars, big
  integers and zero-copy handles count nothing. ``dumps`` refuses a deeper
  value with a :class:`~snakepit_bridge.errors.SerializationError` naming
  the limit and the path to the value (orjson stops at 254 levels; deeper
  values go through the standard library, with the recursion headroom it
  needs). ``loads`` reads what the VM sends (which the VM holds to the
  limit) and refuses, never crashes on, deeper JSON: past the limit plus 8
  levels (the slack Snakepit's own wrappers may add), or past orjson's own
  1024 levels where that is more.
* Integers may have ``max_integer_digits`` decimal digits (default 4300,
  Python's own default). Past it both directions raise a
  ``SerializationError`` naming the limit. The conversions of long integers
  go through ``decimal``, which ``sys.set_int_max_str_digits`` does not
  govern, so what a tool does to that setting changes nothing here; the
  worker also sets it to the limit at start (:func:`apply_limits`).
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import itertools
import json
import math
import os
import re
import sys
import uuid
from typing import Any

# The marker's names keep the import path they had before it had a module.
from ._internal.unserializable import (  # noqa: F401
    DEFAULT_REPR_MAXLEN,
    DETAIL_ENV,
    MAX_REPR_MAXLEN,
    MAXLEN_ENV,
    REPR_KEY,
    TYPE_KEY,
    UNSERIALIZABLE_KEY,
    is_unserializable_marker,
    redact,
    unserializable_marker,
)
from .errors import SerializationError

try:  # optional fast path
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised when orjson is absent
    _orjson = None  # type: ignore[assignment]

__all__ = [
    "MAX_INTEGER_DIGITS",
    "MAX_NESTING_DEPTH",
    "UNSERIALIZABLE_KEY",
    "apply_limits",
    "dumps",
    "loads",
    "to_jsonable",
    "unserializable_marker",
    "is_unserializable_marker",
    "using_orjson",
]

# A run of 19+ digits may be an integer beyond 64 bits, which orjson would
# silently turn into a float. Such payloads are decoded by the stdlib.
_LONG_DIGITS = re.compile(rb"\d{19,}")

INT_KEY = "__snakepit_int__"
FLOAT_KEY = "__snakepit_float__"
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

_CONVERTER_METHODS = ("model_dump", "to_dict", "_asdict", "tolist", "isoformat")

# ---------------------------------------------------------------------- limits

DEPTH_ENV = "SNAKEPIT_MAX_NESTING_DEPTH"
DIGITS_ENV = "SNAKEPIT_MAX_INTEGER_DIGITS"
DEFAULT_MAX_NESTING_DEPTH = 1000
MAX_NESTING_DEPTH_CEILING = 2000
DEFAULT_MAX_INTEGER_DIGITS = 4300
MAX_INTEGER_DIGITS_CEILING = 100_000
# Levels of JSON Snakepit's own wrappers (zero-copy and number markers) may
# add over a value's depth.
WRAPPER_SLACK = 8
# Recursion the standard library's json needs beyond the data's depth (the
# frames of the call that encodes or decodes).
_RECURSION_HEADROOM = 1000
# orjson refuses to encode more than this many levels, and to decode more
# than that many.
_ORJSON_MAX_DEPTH = 254
_ORJSON_MAX_LOAD_DEPTH = 1024
# Integers up to this many bits have fewer than 640 digits: str()/int() take
# them whatever sys.set_int_max_str_digits says.
_PLAIN_INT_BITS = 2000
ZERO_COPY_KEY = "__snakepit_zero_copy__"


def _env_limit(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(os.environ.get(name, "").strip() or default)
    except ValueError:
        value = default
    return max(low, min(value, high))


MAX_NESTING_DEPTH = _env_limit(DEPTH_ENV, DEFAULT_MAX_NESTING_DEPTH, 1, MAX_NESTING_DEPTH_CEILING)
MAX_INTEGER_DIGITS = _env_limit(DIGITS_ENV, DEFAULT_MAX_INTEGER_DIGITS, 20, MAX_INTEGER_DIGITS_CEILING)


def apply_limits() -> tuple[int, int]:
    """Re-read the limits from the environment (a forked worker's differs
    from the fork server's) and set the interpreter to match: the recursion
    limit leaves the standard library's json room for the deepest value, and
    ``sys.set_int_max_str_digits`` is set to the digit limit (at least 640,
    Python's minimum). Returns ``(max_nesting_depth, max_integer_digits)``."""
    global MAX_NESTING_DEPTH, MAX_INTEGER_DIGITS
    MAX_NESTING_DEPTH = _env_limit(DEPTH_ENV, DEFAULT_MAX_NESTING_DEPTH, 1, MAX_NESTING_DEPTH_CEILING)
    MAX_INTEGER_DIGITS = _env_limit(DIGITS_ENV, DEFAULT_MAX_INTEGER_DIGITS, 20, MAX_INTEGER_DIGITS_CEILING)
    _ensure_recursion_headroom()
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(max(MAX_INTEGER_DIGITS, 640))
    return MAX_NESTING_DEPTH, MAX_INTEGER_DIGITS


def _ensure_recursion_headroom() -> None:
    needed = MAX_NESTING_DEPTH + WRAPPER_SLACK + _RECURSION_HEADROOM
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


def _path(node: Any) -> str:
    """The path of a value from its linked path node ``(parent, segment)``,
    its middle elided when long."""
    segments: list[str] = []
    while node is not None:
        node, segment = node
        segments.append(segment)
    segments.reverse()
    if len(segments) > 17:
        left_out = len(segments) - 16
        return "".join(segments[:8]) + f"…<{left_out} levels>…" + "".join(segments[-8:])
    return "".join(segments) or "the top"


def _key_segment(key: str) -> str:
    return "." + (key if len(key) <= 40 else key[:40] + "…")


def _too_deep(path: str) -> SerializationError:
    return SerializationError(f"a value at {path} is nested deeper than max_nesting_depth ({MAX_NESTING_DEPTH})")


def _too_long(digits: int, path: str, at_least: bool = False) -> SerializationError:
    size = f"at least {digits}" if at_least else str(digits)
    return SerializationError(
        f"an integer of {size} digits at {path} is longer than max_integer_digits ({MAX_INTEGER_DIGITS})"
    )


def int_text(value: int, path: str = "the top") -> str:
    """The decimal digits of ``value``, within ``max_integer_digits``
    (whatever ``sys.set_int_max_str_digits`` says)."""
    bits = abs(value).bit_length()
    if bits <= _PLAIN_INT_BITS:
        text = str(value)
    else:
        at_least = math.floor((bits - 1) * math.log10(2) - 1e-6) + 1
        if at_least > MAX_INTEGER_DIGITS:
            raise _too_long(at_least, path, at_least=True)
        text = str(decimal.Decimal(value))
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INTEGER_DIGITS:
        raise _too_long(digits, path)
    return text


def parse_int(text: str) -> int:
    """An integer from its decimal digits, within ``max_integer_digits``
    (whatever ``sys.set_int_max_str_digits`` says)."""
    digits = len(text) - (text[:1] == "-")
    if digits > MAX_INTEGER_DIGITS:
        raise _too_long(digits, "the top")
    if digits < 600:
        return int(text)
    return int(decimal.Decimal(text))


def using_orjson() -> bool:
    """True when the orjson fast path is available."""
    return _orjson is not None


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


def to_jsonable(value: Any) -> Any:
    """Turn ``value`` into plain JSON types (dict/list/str/int/float/bool/None).

    Used on the slow path and wherever a plain structure is needed. The
    walk keeps its own stack, so it holds values of any depth; one nested
    deeper than ``max_nesting_depth``, or an integer longer than
    ``max_integer_digits``, raises :class:`SerializationError`.
    """
    limit = MAX_NESTING_DEPTH
    holder: list[Any] = [None]
    # (value, container to put it in, its slot there, the depth of that
    # container, its path node, conversions so far at this slot)
    work: list[tuple[Any, Any, Any, int, Any, int]] = [(value, holder, 0, 0, None, 0)]
    while work:
        item, target, slot, depth, path, conversions = work.pop()
        if item is None or isinstance(item, (bool, str)):
            target[slot] = item
        elif isinstance(item, enum.Enum):
            work.append((item.value, target, slot, depth, path, conversions + 1))
        elif isinstance(item, int):
            if _INT_MIN <= item <= _INT_MAX:
                target[slot] = int(item)
            else:
                target[slot] = {INT_KEY: int_text(item, _path(path))}
        elif isinstance(item, float):
            target[slot] = item if math.isfinite(item) else _float_marker(item)
        elif isinstance(item, dict) and _is_wrapper(item):
            # Snakepit's own markers stand for scalars wherever they sit.
            ((key, body),) = item.items()
            target[slot] = {key: to_jsonable(body) if isinstance(body, dict) else body}
        elif isinstance(item, dict):
            if depth + 1 > limit:
                raise _too_deep(_path(path))
            out: dict[str, Any] = {}
            target[slot] = out
            for key, child in item.items():
                name = _key_to_str(key)
                out[name] = None
                work.append((child, out, name, depth + 1, (path, _key_segment(name)), 0))
        elif isinstance(item, (list, tuple)) and not hasattr(item, "_asdict"):
            if depth + 1 > limit:
                raise _too_deep(_path(path))
            items: list[Any] = [None] * len(item)
            target[slot] = items
            for index, child in enumerate(item):
                work.append((child, items, index, depth + 1, (path, f"[{index}]"), 0))
        else:
            converted = _convert(item)
            if is_unserializable_marker(converted) or isinstance(converted, str) or conversions > 32:
                target[slot] = converted if conversions <= 32 else unserializable_marker(item)
            elif _is_zero_copy_marker(converted):
                # A handle is a scalar wherever it sits; its body is plain.
                target[slot] = {ZERO_COPY_KEY: to_jsonable(converted[ZERO_COPY_KEY])}
            else:
                work.append((converted, target, slot, depth, path, conversions + 1))
    return holder[0]


def _is_zero_copy_marker(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(ZERO_COPY_KEY), dict)


def _is_wrapper(value: dict[Any, Any]) -> bool:
    """A zero-copy marker, or a number marker (``{"__snakepit_int__": "7"}``)."""
    if len(value) != 1:
        return False
    ((key, body),) = value.items()
    if key == ZERO_COPY_KEY:
        return isinstance(body, dict)
    return key in (INT_KEY, FLOAT_KEY) and isinstance(body, str)


def _float_marker(value: float) -> dict[str, str]:
    if math.isnan(value):
        return {FLOAT_KEY: "nan"}
    return {FLOAT_KEY: "infinity" if value > 0 else "neg_infinity"}


def _may_hold_nonfinite(value: Any) -> bool:
    """Whether ``value`` may hold a NaN or an infinity (which orjson writes as
    ``null``). Objects orjson converted itself are assumed to."""
    stack = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            return True
    return False


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
    plain = to_jsonable(value)
    _ensure_recursion_headroom()
    text = json.dumps(plain, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON bytes. Odd objects are
    converted or marked (never an error); a value nested deeper than
    ``max_nesting_depth`` or an integer longer than ``max_integer_digits``
    raises :class:`SerializationError`."""
    if _orjson is not None:
        try:
            out: bytes = _orjson.dumps(value, default=_default, option=_ORJSON_OPTS)
        except TypeError:
            # Integers beyond 64 bits, tuple subclasses, odd keys, more than
            # 254 levels: slow path.
            pass
        else:
            # orjson writes NaN and infinities as null: only output with a
            # null can hold one. Its own depth limit is below the default
            # one; a lower configured limit is checked on its output.
            if (b"null" not in out or not _may_hold_nonfinite(value)) and (
                MAX_NESTING_DEPTH > _ORJSON_MAX_DEPTH or json_depth(out) <= MAX_NESTING_DEPTH
            ):
                return out
    return _stdlib_dumps(value)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON, keeping integers of any size as ``int``. JSON nested
    deeper than the module's rules allow, or holding an integer longer than
    ``max_integer_digits``, raises :class:`SerializationError`; bytes that
    are not JSON raise ``ValueError``."""
    if isinstance(data, str):
        raw = data.encode("utf-8")
    else:
        raw = bytes(data)
    value = _parse(raw)
    if _MARKED_NUMBER in raw:
        value = _unmark_numbers(value)
    return value


_MARKED_NUMBER = b'"__snakepit_'

# A JSON string (its escapes included), to blank out before brackets are
# counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets to +1, closing ones to -1 (as signed bytes).
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(raw: bytes) -> int:
    """How deep the JSON ``raw`` nests (brackets inside strings do not
    count). Runs at C speed: strings are removed with a regex, the brackets
    kept and summed with ``itertools.accumulate``."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = memoryview(brackets.translate(_BRACKET_STEPS)).cast("b")
    return max(itertools.accumulate(steps))


def _check_depth(raw: bytes) -> None:
    limit = max(MAX_NESTING_DEPTH + WRAPPER_SLACK, _ORJSON_MAX_LOAD_DEPTH)
    # Fewer opening brackets than the limit cannot nest past it.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    depth = json_depth(raw)
    if depth > limit:
        raise SerializationError(
            f"the JSON is nested {depth} levels deep, deeper than max_nesting_depth "
            f"({MAX_NESTING_DEPTH}) allows"
        )


def _parse(raw: bytes) -> Any:
    if _orjson is not None and not _LONG_DIGITS.search(raw):
        try:
            # orjson refuses more than 1024 levels by itself.
            return _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # NaN / Infinity from Elixir, too deep, or not JSON: the stdlib decides
    _check_depth(raw)
    _ensure_recursion_headroom()
    return json.loads(raw, parse_int=parse_int)


_FLOATS = {"nan": math.nan, "infinity": math.inf, "neg_infinity": -math.inf}


def _unmarked(value: Any) -> tuple[bool, Any]:
    """``(True, number)`` when ``value`` is a number marker."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, item),) = value.items()
        if key == INT_KEY and isinstance(item, str):
            return True, parse_int(item)
        if key == FLOAT_KEY and item in _FLOATS:
            return True, _FLOATS[item]
    return False, value


def _unmark_numbers(value: Any) -> Any:
    """``value`` with the number markers ``dumps`` writes turned back into
    numbers, so ``loads(dumps(x)) == x`` in Python too (in place, with an
    explicit stack)."""
    found, number = _unmarked(value)
    if found:
        return number
    stack = [value]
    while stack:
        container = stack.pop()
        slots = container.items() if isinstance(container, dict) else enumerate(container)
        for slot, item in list(slots):
            found, number = _unmarked(item)
            if found:
                container[slot] = number
            elif isinstance(item, (dict, list)):
                stack.append(item)
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
