"""The per-VM secret: a worker's server refuses calls without it before any
servicer code runs; the bridge client and the fork server use it."""

from __future__ import annotations

import grpc
import pytest
from helpers import request, result_of, run, running_worker
from sample_adapters import TestAdapter

from snakepit_bridge._internal import auth
from snakepit_bridge._internal.elixir_bridge import ElixirBridgeClient
from snakepit_bridge._internal.fork_server import BadRequest, parse_request
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb

SECRET = "ab" * 32


@pytest.fixture
def secret():
    auth.set_secret(SECRET)
    yield SECRET
    auth.set_secret(None)


def test_calls_without_or_with_a_wrong_secret_are_refused(sock_dir, secret):
    adapter = TestAdapter()

    async def go():
        async with running_worker(adapter, sock_dir) as (_, stub):
            before = auth.refused_count()
            for metadata in ([], [(auth.HEADER, "cd" * 32)], [(auth.HEADER, secret[:-1])]):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ExecuteTool(request("add", {"a": 1, "b": 2}), metadata=metadata)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                stream = stub.ExecuteStreamingTool(request("count", {"n": 2}), metadata=metadata)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stream.read()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert auth.refused_count() == before + 6
            # Nothing ran: no session was touched, no tool called.
            assert adapter.seen_contexts == []
            ok = await stub.ExecuteTool(request("add", {"a": 1, "b": 2}), metadata=[(auth.HEADER, secret)])
            assert result_of(ok) == 3
            ping = await stub.Ping(pb.PingRequest(message="x"), metadata=[(auth.HEADER, secret)])
            assert ping.message == "x"

    run(go())


def test_the_secret_is_taken_out_of_the_environment():
    env = {auth.ENV_VAR: SECRET, "OTHER": "1"}
    try:
        assert auth.load_from_env(env) == SECRET
        assert auth.ENV_VAR not in env
        assert auth.secret() == SECRET
    finally:
        auth.set_secret(None)


def test_bridge_calls_carry_the_secret(secret):
    client = ElixirBridgeClient("unix:/nonexistent.sock", "w1")
    assert (auth.HEADER, secret) in client._metadata()
    assert ("x-snakepit-worker-id", "w1") in client._metadata()


def test_the_fork_server_refuses_requests_without_the_secret():
    body = b'{"id": 7, "argv": ["python", "-m", "snakepit_bridge.server"], "env": [], "cwd": null'
    with pytest.raises(BadRequest) as err:
        parse_request(body + b"}", [3, 4], SECRET)
    assert "unauthenticated" in str(err.value) and err.value.request_id == 7
    with pytest.raises(BadRequest):
        parse_request(body + b', "token": "' + b"cd" * 32 + b'"}', [3, 4], SECRET)
    ok = parse_request(body + b', "token": "' + SECRET.encode() + b'"}', [3, 4], SECRET)
    assert ok.id == 7
