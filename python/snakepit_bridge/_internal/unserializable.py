"""The *unserializable marker*: what stands in for a value that JSON cannot
hold and no converter handles (see :mod:`snakepit_bridge.serialization` for
the rules and the ``SNAKEPIT_UNSERIALIZABLE_*`` settings), and the masking of
secrets in the repr it may carry."""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = ["UNSERIALIZABLE_KEY", "unserializable_marker", "is_unserializable_marker", "redact"]

UNSERIALIZABLE_KEY = "__ffi_unserializable__"
TYPE_KEY = "__type__"
REPR_KEY = "__repr__"

DETAIL_ENV = "SNAKEPIT_UNSERIALIZABLE_DETAIL"
MAXLEN_ENV = "SNAKEPIT_UNSERIALIZABLE_REPR_MAXLEN"
DEFAULT_REPR_MAXLEN = 500
MAX_REPR_MAXLEN = 2000

_DETAIL_MODES = ("none", "type", "repr_truncated", "repr_redacted_truncated")


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
