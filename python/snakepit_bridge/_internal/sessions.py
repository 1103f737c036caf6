"""The worker's small session table.

Elixir owns sessions (SessionStore); a worker only remembers the sessions it
was told about, so GetSession can answer and tools can see session metadata.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Session", "SessionTable"]

DEFAULT_MAX_SESSIONS = 10_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Session:
    session_id: str
    created_at_ms: int
    last_accessed_ms: int
    metadata: dict[str, Any] = field(default_factory=dict)


class SessionTable:
    """Thread-safe, bounded (least recently used sessions are evicted)."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def initialize(self, session_id: str, metadata: dict[str, Any] | None = None) -> Session:
        stamp = now_ms()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                session = Session(session_id, stamp, stamp, dict(metadata or {}))
                self._sessions[session_id] = session
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            else:
                session.last_accessed_ms = stamp
                if metadata:
                    session.metadata.update(metadata)
                self._sessions.move_to_end(session_id)
            return session

    def touch(self, session_id: str) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None:
                session.last_accessed_ms = now_ms()
                self._sessions.move_to_end(session_id)
            return session

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def remove(self, session_id: str) -> Session | None:
        with self._lock:
            return self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
