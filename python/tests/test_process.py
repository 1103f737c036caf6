"""The worker as Elixir runs it: `python -m snakepit_bridge.server` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from helpers import finish, read_handshake, request, result_of, run, spawn_worker
from sample_adapters import marker_lines

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc


async def stub_for(address: str):
    channel = grpc.aio.insecure_channel(address)
    return channel, pb_grpc.BridgeServiceStub(channel)


def test_ready_line_calls_and_sigterm(sock_dir):
    address = f"unix:{sock_dir / 'worker.sock'}"
    marker = sock_dir / "marker.txt"

    async def go():
        proc = await spawn_worker(
            "--adapter",
            "sample_adapters.CleanupRecorder",
            "--address",
            address,
            "--worker-id",
            "pool_worker_1",
            "--snakepit-run-id",
            "k3x9a2p",
            "--some-future-flag",
            "value",
            env={"SNAKEPIT_TEST_MARKER": str(marker)},
        )
        line = await read_handshake(proc)
        assert line == f"SNAKEPIT_READY {address}"
        assert marker_lines(marker) == ["initialize"]
        assert os.stat(address[len("unix:") :]).st_mode & 0o077 == 0

        channel, stub = await stub_for(address)
        pong = await stub.Ping(pb.PingRequest(message="hi"))
        assert pong.message == "hi" and pong.worker_id == "pool_worker_1"
        out = result_of(await stub.ExecuteTool(request("ping")))
        assert out == {"pid": proc.pid}
        # a tool printing to stdout does not disturb the protocol
        assert result_of(await stub.ExecuteTool(request("print_to_stdout"))) == "printed"
        await channel.close()

        proc.send_signal(signal.SIGTERM)
        code, stdout, stderr = await finish(proc)
        assert code == 0, stderr
        assert marker_lines(marker) == ["initialize", "cleanup"]
        assert "hello from a tool" in stdout
        assert "SNAKEPIT_" not in stdout
        assert "--some-future-flag" in stderr  # warned, not fatal

    run(go())


def test_sigint_also_stops_cleanly(sock_dir):
    address = f"unix:{sock_dir / 'w.sock'}"

    async def go():
        proc = await spawn_worker("--adapter", "sample_adapters.CleanupRecorder", "--address", address)
        assert (await read_handshake(proc)).startswith("SNAKEPIT_READY ")
        proc.send_signal(signal.SIGINT)
        code, _, stderr = await finish(proc)
        assert code == 0, stderr

    run(go())


def test_sigterm_with_a_tool_still_running_exits_promptly(sock_dir):
    address = f"unix:{sock_dir / 'w.sock'}"
    marker = sock_dir / "marker.txt"

    async def go():
        proc = await spawn_worker(
            "--adapter",
            "sample_adapters.CleanupRecorder",
            "--address",
            address,
            env={"SNAKEPIT_TEST_MARKER": str(marker)},
        )
        assert (await read_handshake(proc)).startswith("SNAKEPIT_READY ")
        channel, stub = await stub_for(address)
        hanging = asyncio.ensure_future(stub.ExecuteTool(request("hang")))
        # make sure the call reached the tool before signalling
        assert result_of(await stub.ExecuteTool(request("ping")))["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        code, _, stderr = await finish(proc)  # bounded by helpers.WAIT_S
        assert code == 0, stderr
        assert marker_lines(marker)[-1] == "cleanup"
        with pytest.raises(grpc.RpcError):
            await hanging
        await channel.close()

    run(go())


def test_sigterm_during_initialize_exits_without_ready(sock_dir):
    async def go():
        proc = await spawn_worker("--adapter", "sample_adapters.SlowInit", "--address", f"unix:{sock_dir}/w.sock")
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.decode().strip() == "INIT_STARTED"
        proc.send_signal(signal.SIGTERM)
        code, stdout, stderr = await finish(proc)
        assert code == 0, stderr
        assert "SNAKEPIT_READY" not in stdout
        assert "SNAKEPIT_STARTUP_ERROR" not in stderr

    run(go())


def test_tcp_port_zero_reports_the_bound_port(sock_dir):
    ready_file = sock_dir / "ready.txt"

    async def go():
        # default ShowcaseAdapter
        proc = await spawn_worker("--address", "127.0.0.1:0", env={"SNAKEPIT_READY_FILE": str(ready_file)})
        line = await read_handshake(proc)
        prefix, address = line.split(" ", 1)
        assert prefix == "SNAKEPIT_READY"
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert ready_file.read_text().strip() == address
        channel, stub = await stub_for(address)
        assert result_of(await stub.ExecuteTool(request("add", {"a": 5, "b": 3}))) == {"result": 8}
        await channel.close()
        proc.terminate()
        code, _, stderr = await finish(proc)
        assert code == 0, stderr

    run(go())


def startup_error(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    async def go():
        proc = await spawn_worker(*args, env=env)
        return await finish(proc)

    return run(go())


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("SNAKEPIT_STARTUP_ERROR ")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_missing_adapter_module(sock_dir):
    code, stdout, stderr = startup_error("--adapter", "no_such_module.Adapter", "--address", f"unix:{sock_dir}/w.sock")
    assert code == 2
    assert error_line(stderr) == (
        "SNAKEPIT_STARTUP_ERROR cannot import adapter module 'no_such_module': No module named 'no_such_module'"
    )
    assert "Traceback" in stderr
    assert "SNAKEPIT_READY" not in stdout


def test_missing_adapter_class(sock_dir):
    code, _, stderr = startup_error("--adapter", "sample_adapters.Nope", "--address", f"unix:{sock_dir}/w.sock")
    assert code == 2
    assert "adapter module 'sample_adapters' has no attribute 'Nope'" in error_line(stderr)


def test_initialize_failure(sock_dir):
    code, stdout, stderr = startup_error(
        "--adapter", "sample_adapters.FailingInit", "--address", f"unix:{sock_dir}/w.sock"
    )
    assert code == 2
    line = error_line(stderr)
    assert "initialize() failed" in line and "RuntimeError: model file missing" in line
    assert "SNAKEPIT_READY" not in stdout


def test_constructor_failure(sock_dir):
    code, _, stderr = startup_error(
        "--adapter", "sample_adapters.FailingConstructor", "--address", f"unix:{sock_dir}/w.sock"
    )
    assert code == 2
    assert "cannot instantiate adapter 'sample_adapters.FailingConstructor': ValueError: bad config" in error_line(
        stderr
    )


def test_bind_failure(sock_dir):
    code, _, stderr = startup_error("--address", f"unix:{sock_dir}/missing-dir/w.sock")
    assert code == 2
    assert "cannot bind gRPC server" in error_line(stderr)


def test_bind_failure_port_in_use():
    async def go():
        first = await spawn_worker("--address", "127.0.0.1:0")
        address = (await read_handshake(first)).split(" ", 1)[1]
        second = await spawn_worker("--address", address)
        code, _, stderr = await finish(second)
        first.terminate()
        await finish(first)
        return code, stderr, address

    code, stderr, address = run(go())
    assert code == 2
    assert f"cannot bind gRPC server to '{address}'" in error_line(stderr)


def test_threaded_mode_refuses_non_thread_safe_adapter(sock_dir):
    code, _, stderr = startup_error(
        "--adapter", "sample_adapters.NotThreadSafe", "--address", f"unix:{sock_dir}/w.sock", "--max-workers", "8"
    )
    assert code == 2
    line = error_line(stderr)
    assert "not thread-safe" in line and "__thread_safe__" in line


def test_threaded_mode_accepts_thread_safe_adapter(sock_dir):
    address = f"unix:{sock_dir}/w.sock"

    async def go():
        proc = await spawn_worker(
            "--adapter", "sample_adapters.Threaded", "--address", address, "--mode", "threaded", "--max-workers", "4"
        )
        assert (await read_handshake(proc)) == f"SNAKEPIT_READY {address}"
        proc.terminate()
        code, _, stderr = await finish(proc)
        assert code == 0, stderr

    run(go())
