"""Heartbeats: the worker's mirror of the Elixir settings and its dependent-mode watchdog."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
from helpers import finish, read_handshake, run, spawn_worker

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc
from snakepit_bridge.heartbeat import ENV_VAR, EXIT_CODE, HeartbeatConfig, HeartbeatWatchdog

FAST = {"ping_interval_ms": 50, "timeout_ms": 100, "max_missed_heartbeats": 2, "dependent": True}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_config_defaults_match_elixir():
    config = HeartbeatConfig()
    assert (config.enabled, config.ping_interval_ms, config.timeout_ms) == (True, 2_000, 10_000)
    assert (config.max_missed_heartbeats, config.initial_delay_ms, config.dependent) == (3, 0, True)
    assert config.silence_limit_s == 16.0


def test_config_from_env_ignores_unknown_keys_and_bad_values():
    env = {ENV_VAR: json.dumps({"ping_interval_ms": 10, "dependent": False, "future": 1, "timeout_ms": "x"})}
    config = HeartbeatConfig.from_env(env)
    assert config == HeartbeatConfig(ping_interval_ms=10, dependent=False)
    assert HeartbeatConfig.from_env({}) is None
    assert HeartbeatConfig.from_env({ENV_VAR: "{not json"}) is None
    assert HeartbeatConfig.from_env({ENV_VAR: "[1]"}) is None


def test_watchdog_expires_after_the_silence_limit_and_beats_reset_it():
    clock = FakeClock()
    dog = HeartbeatWatchdog(HeartbeatConfig.from_mapping(FAST), clock=clock)
    dog.start()
    clock.now += 0.19  # limit: 50 * 2 + 100 ms
    assert not dog.expired()
    clock.now += 0.02
    assert dog.expired()
    dog.beat()
    assert not dog.expired() and dog.beats == 1


def test_initial_delay_extends_the_first_wait():
    clock = FakeClock()
    dog = HeartbeatWatchdog(HeartbeatConfig.from_mapping({**FAST, "initial_delay_ms": 1_000}), clock=clock)
    dog.start()
    clock.now += 1.1
    assert not dog.expired()
    clock.now += 0.2
    assert dog.expired()


def test_independent_or_disabled_never_expires():
    clock = FakeClock()
    for overrides in ({"dependent": False}, {"enabled": False}):
        dog = HeartbeatWatchdog(HeartbeatConfig.from_mapping({**FAST, **overrides}), clock=clock)
        clock.now += 3600
        assert not dog.expired()


def test_dependent_worker_exits_when_elixir_goes_silent(sock_dir):
    address = f"unix:{sock_dir / 'hb.sock'}"

    async def go():
        proc = await spawn_worker("--address", address, env={ENV_VAR: json.dumps(FAST)})
        assert await read_handshake(proc) == f"SNAKEPIT_READY {address}"
        code, _out, err = await finish(proc)
        assert code == EXIT_CODE, err
        assert "no heartbeat from Elixir" in err

    run(go())


# A silence limit of 1 s (250 * 2 + 500 ms): long beside the 25 ms between
# beats, so that a loaded machine that delays the test's beats (or the
# worker's loop) by a few hundred ms does not part them.
KEEPALIVE = {"ping_interval_ms": 250, "timeout_ms": 500, "max_missed_heartbeats": 2, "dependent": True}


def test_heartbeats_keep_a_dependent_worker_alive(sock_dir):
    address = f"unix:{sock_dir / 'hb.sock'}"
    limit_s = HeartbeatConfig.from_mapping(KEEPALIVE).silence_limit_s

    async def go():
        proc = await spawn_worker("--address", address, env={ENV_VAR: json.dumps(KEEPALIVE)})
        assert await read_handshake(proc) == f"SNAKEPIT_READY {address}"
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            # Beats for two and a half silence limits: without them it would
            # have exited twice over.
            started = last = loop.time()
            gaps = []
            while last - started < 2.5 * limit_s:
                reply = await stub.Heartbeat(pb.HeartbeatRequest(worker_id="w"))
                assert reply.ok
                now = loop.time()
                gaps.append(now - last)
                last = now
                await asyncio.sleep(0.025)
            assert proc.returncode is None, f"exited; longest gap between beats {max(gaps):.3f} s"
            assert (await stub.Ping(pb.PingRequest(message="x"))).message == "x"
        proc.send_signal(signal.SIGTERM)
        code, _out, err = await finish(proc)
        assert code == 0, err

    run(go())


def test_independent_worker_outlives_silence(sock_dir):
    address = f"unix:{sock_dir / 'hb.sock'}"

    async def go():
        proc = await spawn_worker("--address", address, env={ENV_VAR: json.dumps({**FAST, "dependent": False})})
        assert await read_handshake(proc) == f"SNAKEPIT_READY {address}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            await asyncio.sleep(0.6)  # three silence limits
            assert proc.returncode is None
            assert (await stub.Ping(pb.PingRequest(message="x"))).message == "x"
        proc.send_signal(signal.SIGTERM)
        code, _out, err = await finish(proc)
        assert code == 0, err

    run(go())
