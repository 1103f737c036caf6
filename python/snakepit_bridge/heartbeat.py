"""Heartbeats between Elixir and a worker.

Elixir's ``Snakepit.HeartbeatMonitor`` calls the worker's ``Heartbeat`` RPC
every ``ping_interval_ms``; a worker that misses ``max_missed_heartbeats`` in a
row is killed and restarted (Elixir's side of *dependent* mode).

This module is the worker's side: in dependent mode the worker exits by itself
when Elixir stops sending heartbeats for longer than
``ping_interval_ms * max_missed_heartbeats + timeout_ms`` (plus
``initial_delay_ms`` before the first one), e.g. when the BEAM hangs or is
stopped without its children noticing. In independent mode the worker only
answers.

The configuration arrives as JSON in ``SNAKEPIT_HEARTBEAT_CONFIG``; its keys are
those of ``Snakepit.Config.heartbeat_defaults/0`` on the Elixir side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

log = logging.getLogger("snakepit_bridge.heartbeat")

__all__ = ["ENV_VAR", "EXIT_CODE", "HeartbeatConfig", "HeartbeatWatchdog"]

ENV_VAR = "SNAKEPIT_HEARTBEAT_CONFIG"
#: Exit status of a worker that stopped because Elixir went silent.
EXIT_CODE = 3


@dataclass(frozen=True)
class HeartbeatConfig:
    """Mirror of the Elixir heartbeat settings (same keys, same defaults)."""

    enabled: bool = True
    ping_interval_ms: int = 2_000
    timeout_ms: int = 10_000
    max_missed_heartbeats: int = 3
    initial_delay_ms: int = 0
    dependent: bool = True

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> HeartbeatConfig:
        """Build from a mapping; unknown keys and values of the wrong type are ignored."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in data:
                continue
            value = data[field.name]
            default = getattr(cls, field.name)
            if isinstance(default, bool):
                if isinstance(value, bool):
                    values[field.name] = value
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                values[field.name] = value
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HeartbeatConfig | None:
        """The configuration in ``SNAKEPIT_HEARTBEAT_CONFIG``, or None when unset."""
        raw = (environ if environ is not None else os.environ).get(ENV_VAR)
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("%s is not valid JSON; heartbeat watchdog disabled", ENV_VAR)
            return None
        if not isinstance(data, dict):
            log.warning("%s must be a JSON object; heartbeat watchdog disabled", ENV_VAR)
            return None
        return cls.from_mapping(data)

    @property
    def silence_limit_s(self) -> float:
        """Longest silence from Elixir a dependent worker tolerates."""
        return (self.ping_interval_ms * max(self.max_missed_heartbeats, 1) + self.timeout_ms) / 1000.0

    @property
    def watching(self) -> bool:
        return self.enabled and self.dependent


class HeartbeatWatchdog:
    """Notes each heartbeat from Elixir and tells when Elixir has gone silent."""

    def __init__(self, config: HeartbeatConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.beats = 0
        self._last = clock() + config.initial_delay_ms / 1000.0

    def start(self) -> None:
        """Start the silence clock now (call when the worker is ready)."""
        self._last = self.clock() + self.config.initial_delay_ms / 1000.0

    def beat(self) -> None:
        self.beats += 1
        self._last = self.clock()

    def silent_for(self) -> float:
        return max(0.0, self.clock() - self._last)

    def expired(self) -> bool:
        return self.config.watching and self.silent_for() > self.config.silence_limit_s

    async def watch(self, on_expired: Callable[[float], None]) -> None:
        """Poll until the silence limit is passed, then call ``on_expired(silence_s)``."""
        if not self.config.watching:
            return
        poll = min(max(self.config.silence_limit_s / 4.0, 0.01), 1.0)
        while not self.expired():
            await asyncio.sleep(poll)
        on_expired(self.silent_for())
