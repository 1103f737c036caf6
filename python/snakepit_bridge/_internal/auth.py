"""The per-VM secret every call between Snakepit's VM and its workers carries.

Snakepit's native core makes a secret from the kernel's CSPRNG when the VM
starts and hands it to each worker (and fork server) in its environment as
``SNAKEPIT_AUTH_TOKEN`` (``/proc/PID/environ`` is readable by the owner only;
the command line, which anyone can read, never carries it). At startup the
worker takes it out of ``os.environ`` (:func:`load_from_env`), so neither
the adapter nor the processes it starts see it.

* The worker's gRPC server refuses any call without it (``UNAUTHENTICATED``)
  before any tool, session or registry code runs (:func:`refuse_unless_valid`).
* The worker's calls into the Elixir bridge carry it (:func:`metadata`), and
  the bridge refuses calls without it.
* The fork server refuses spawn requests without it.

Comparisons are constant-time (:func:`hmac.compare_digest`). A worker started
by hand without the variable has no secret and checks nothing.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from typing import Any, Iterable

import grpc

from .. import telemetry

__all__ = ["ENV_VAR", "HEADER", "load_from_env", "metadata", "refuse_unless_valid", "secret", "valid", "refused_count",
           "count_refusal"]

ENV_VAR = "SNAKEPIT_AUTH_TOKEN"
HEADER = "x-snakepit-auth"

log = logging.getLogger("snakepit_bridge.auth")

_secret: str | None = None
_refused = 0
_refused_lock = threading.Lock()


def load_from_env(environ: Any = None) -> str | None:
    """Take the secret out of the environment (idempotent); return it."""
    global _secret
    env = os.environ if environ is None else environ
    value = env.pop(ENV_VAR, None)
    if value:
        _secret = value
    return _secret


def secret() -> str | None:
    return _secret


def set_secret(value: str | None) -> None:
    """Set the secret directly (tests, in-process workers)."""
    global _secret
    _secret = value or None


def valid(candidate: str | bytes | None, expected: str | None = None) -> bool:
    """Does ``candidate`` carry the secret? True when there is none to check."""
    expected = _secret if expected is None else expected
    if not expected:
        return True
    if candidate is None:
        return False
    if isinstance(candidate, str):
        candidate = candidate.encode("utf-8", "replace")
    return hmac.compare_digest(candidate, expected.encode("ascii"))


def metadata() -> list[tuple[str, str]]:
    """Metadata to send on calls into the Elixir bridge."""
    return [(HEADER, _secret)] if _secret else []


def refused_count() -> int:
    return _refused


def count_refusal(method: str, reason: str) -> None:
    global _refused
    with _refused_lock:
        _refused += 1
    log.warning("refused %s: %s secret", method, reason)
    telemetry.emit(("security", "unauthenticated"), {"count": 1}, {"method": method, "reason": reason})


def _find(items: Iterable[Any] | None) -> str | bytes | None:
    for key, value in items or ():
        if key == HEADER:
            return value
    return None


_REFUSAL = "this worker answers only to the VM that started it"


async def refuse_unless_valid(context: Any) -> None:
    """First thing every servicer method does: abort the call with
    UNAUTHENTICATED unless it carries the secret. A check in the handler
    costs a few microseconds; a grpc.aio server interceptor costs ~50 us per
    call (bench/auth_overhead.py)."""
    if not _secret:
        return
    candidate = _find(context.invocation_metadata())
    if candidate is not None and valid(candidate):
        return
    count_refusal(_method(context), "missing" if candidate is None else "wrong")
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, _REFUSAL)


def _method(context: Any) -> str:
    try:
        return context._rpc_event.call_details.method.decode()  # grpc.aio internals, for the log only
    except Exception:  # noqa: BLE001
        return "?"
