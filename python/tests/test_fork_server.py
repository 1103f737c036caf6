"""The fork server (zygote) driven as the controller drives it: a real
`python -m snakepit_bridge.fork_server` process, requests over its
SOCK_SEQPACKET control socket, workers forked from it."""

from __future__ import annotations

import compileall
import contextlib
import importlib
import itertools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from helpers import PYTHON_DIR, TESTS_DIR, WAIT_S, request, result_of, run, worker_env
from sample_adapters import marker_lines

from snakepit_bridge._internal.fork_server import _bytecode_missing
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc

SERVER = [sys.executable, "-m", "snakepit_bridge.server"]


def read_until(fd: int, done: Callable[[bytes], bool]) -> bytes:
    """Read ``fd`` until ``done(data)`` or EOF; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    data = b""
    while not done(data):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out reading fd {fd}; got so far: {data!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data


def read_line(fd: int) -> str:
    return read_until(fd, lambda data: b"\n" in data).decode().split("\n")[0]


def read_to_eof(fd: int) -> str:
    return read_until(fd, lambda _: False).decode()


def wait_gone(pid: int) -> None:
    """Wait until ``pid`` has exited (a zombie counts: it runs no more)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([pidfd], [], [], WAIT_S)[0], f"process {pid} is still running"
    finally:
        os.close(pidfd)


def open_files(pid: int) -> set[tuple[int, int]]:
    """(device, inode) of what ``pid`` has open on fds 3 and up."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if int(fd) > 2:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(f"/proc/{pid}/fd/{fd}")
                found.add((st.st_dev, st.st_ino))
    return found


def call_tool(address: str, tool: str) -> Any:
    async def go() -> Any:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            return result_of(await stub.ExecuteTool(request(tool), timeout=WAIT_S))

    return run(go())


@dataclass
class Forked:
    id: int
    pid: int
    stdout: int  # read ends of the pipes handed to the worker
    stderr: int


class Zygote:
    def __init__(self, sock_dir: Path, bridge_dir: Path = PYTHON_DIR, env: dict[str, str] | None = None):
        self.control_path = sock_dir / "zygote.sock"
        env = {**os.environ, **(env or {})}
        # Only the bridge: the tests' adapters come from each request's PYTHONPATH.
        env["PYTHONPATH"] = str(bridge_dir)
        self.stderr_path = sock_dir / "zygote.err"
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "snakepit_bridge.fork_server",
                    "--control",
                    str(self.control_path),
                    "--snakepit-run-id",
                    "fz7run",
                    "--instance-name",
                    "fork-test",
                    "--some-future-flag",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=str(sock_dir),
            )
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.fileno()
        self.ids = itertools.count(1)
        self.received: list[dict[str, Any]] = []  # every message, in arrival order
        self.unclaimed: list[dict[str, Any]] = []
        self.fds: list[int] = []
        self.pids: list[int] = []
        assert read_line(self.stdout) == "SNAKEPIT_FORK_SERVER_READY", self.stderr_text()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(str(self.control_path))

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def send(self, message: Any, fds: list[int]) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        socket.send_fds(self.sock, [payload], fds)

    def expect(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message (already received or next to come) that matches."""
        for message in self.unclaimed:
            if match(message):
                self.unclaimed.remove(message)
                return message
        deadline = time.monotonic() + WAIT_S
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                pytest.fail(f"no matching message from the zygote; got {self.received}\n{self.stderr_text()}")
            assert data, f"zygote closed the connection\n{self.stderr_text()}"
            message = json.loads(data)
            self.received.append(message)
            if match(message):
                return message
            self.unclaimed.append(message)

    def reply_to(self, request_id: int | None) -> dict[str, Any]:
        return self.expect(lambda m: "exit" not in m and m.get("id") == request_id)

    def exit_of(self, pid: int) -> dict[str, Any]:
        return self.expect(lambda m: m.get("exit") == pid)

    def pipes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        out, err = os.pipe(), os.pipe()
        self.fds.extend([out[0], err[0]])
        return out, err

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> Forked:
        (out_r, out_w), (err_r, err_w) = self.pipes()
        request_id = next(self.ids)
        self.send({"id": request_id, "argv": argv, "env": sorted(env.items()), "cwd": cwd}, [out_w, err_w])
        os.close(out_w)
        os.close(err_w)
        reply = self.reply_to(request_id)
        assert "pid" in reply, reply
        self.pids.append(reply["pid"])
        return Forked(request_id, reply["pid"], out_r, err_r)

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        self.sock.close()
        self.proc.kill()
        self.proc.wait(WAIT_S)
        self.proc.stdout.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def zygote(sock_dir: Path) -> Iterator[Zygote]:
    z = Zygote(sock_dir)
    try:
        yield z
    finally:
        z.close()


def test_forked_worker_serves_with_the_requested_process_state(sock_dir, zygote):
    cwd = sock_dir / "work"
    cwd.mkdir()
    address = f"unix:{sock_dir / 'w.sock'}"
    args = ["--adapter", "sample_adapters.ProcessInfo", "--address", address, "--worker-id", "fork_w1"]
    env = worker_env({"SNAKEPIT_FORK_TEST": "from-request"})

    worker = zygote.spawn([*SERVER, *args], env, cwd=str(cwd))
    assert read_line(worker.stdout) == f"SNAKEPIT_READY {address}"
    assert not zygote.control_path.exists()

    assert os.getsid(worker.pid) == worker.pid
    assert os.readlink(f"/proc/{worker.pid}/fd/0") == "/dev/null"
    assert os.fstat(worker.stdout).st_ino == os.stat(f"/proc/{worker.pid}/fd/1").st_ino
    assert os.fstat(worker.stderr).st_ino == os.stat(f"/proc/{worker.pid}/fd/2").st_ino
    # Nothing of the zygote's (control socket, SIGCHLD wakeup pipe) stays open in the worker.
    assert not open_files(worker.pid) & open_files(zygote.proc.pid)
    with open(f"/proc/{worker.pid}/cmdline", "rb") as fh:
        assert b"\0--snakepit-run-id\0fz7run\0" in fh.read()  # the zygote's, for OS-level cleanup

    info = call_tool(address, "process_info")
    assert info["pid"] == worker.pid
    assert info["environ"] == env
    assert info["cwd"] == str(cwd.resolve())
    assert info["argv"][1:] == args
    assert info["path"][0] == str(cwd.resolve())
    assert str(TESTS_DIR) in info["path"]
    assert info["signals"]["SIGCHLD"] == str(signal.SIG_DFL)
    assert info["signals"]["SIGPIPE"] == str(signal.SIG_IGN)
    assert info["stdout_write_through"] is True  # PYTHONUNBUFFERED=1 in the request env

    os.kill(worker.pid, signal.SIGKILL)
    assert zygote.exit_of(worker.pid) == {"exit": worker.pid, "signal": signal.SIGKILL}
    assert zygote.proc.poll() is None


def test_exit_codes_and_stderr_of_workers_reach_the_controller(sock_dir, zygote):
    env = worker_env()
    bad_adapter = zygote.spawn(
        [*SERVER, "--adapter", "no_such_module.Nope", "--address", f"unix:{sock_dir / 'a.sock'}"], env
    )
    bad_flag = zygote.spawn([*SERVER, "--max-workers", "many", "--address", f"unix:{sock_dir / 'b.sock'}"], env)

    assert zygote.exit_of(bad_adapter.pid) == {"exit": bad_adapter.pid, "code": 2}
    assert "SNAKEPIT_STARTUP_ERROR" in read_to_eof(bad_adapter.stderr)
    assert read_to_eof(bad_adapter.stdout) == ""
    assert zygote.exit_of(bad_flag.pid) == {"exit": bad_flag.pid, "code": 2}  # argparse's SystemExit
    assert "--max-workers: invalid int value" in read_to_eof(bad_flag.stderr)

    for pid in (bad_adapter.pid, bad_flag.pid):
        replied = next(i for i, m in enumerate(zygote.received) if m.get("pid") == pid)
        exited = next(i for i, m in enumerate(zygote.received) if m.get("exit") == pid)
        assert replied < exited, zygote.received

    # A clean stop: SIGTERM runs the adapter's cleanup and exits 0.
    address = f"unix:{sock_dir / 'c.sock'}"
    marker = sock_dir / "marker.txt"
    worker = zygote.spawn(
        [*SERVER, "--adapter", "sample_adapters.CleanupRecorder", "--address", address],
        worker_env({"SNAKEPIT_TEST_MARKER": str(marker)}),
    )
    assert read_line(worker.stdout) == f"SNAKEPIT_READY {address}"
    assert call_tool(address, "print_to_stdout") == "printed"
    assert "hello from a tool" in read_until(worker.stdout, lambda d: b"hello from a tool" in d).decode()
    os.kill(worker.pid, signal.SIGTERM)
    assert zygote.exit_of(worker.pid) == {"exit": worker.pid, "code": 0}
    assert marker_lines(marker) == ["initialize", "cleanup"]


def test_malformed_requests_get_an_error_and_the_zygote_keeps_serving(sock_dir, zygote):
    good = {"argv": [*SERVER, "--adapter", "no_such_module.Nope"], "env": [["A", "1"]], "cwd": None}
    bad: list[tuple[Any, str]] = [
        (b"\xffnot json", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        ({"argv": good["argv"]}, "integer 'id'"),
        ({**good, "id": 7, "argv": "python"}, "argv"),
        ({**good, "id": 8, "argv": [sys.executable, "-m", "http.server"]}, "http.server"),
        ({**good, "id": 9, "env": [["A=B", "1"]]}, "env"),
        ({**good, "id": 10, "env": {"A": "1"}}, "env"),
        ({**good, "id": 11, "cwd": 3}, "cwd"),
    ]
    for message, complaint in bad:
        (out_r, out_w), (err_r, err_w) = zygote.pipes()
        zygote.send(message, [out_w, err_w])
        os.close(out_w)
        os.close(err_w)
        request_id = message.get("id") if isinstance(message, dict) else None
        reply = zygote.reply_to(request_id)
        assert set(reply) == {"id", "error"} and complaint in reply["error"], reply
        # The zygote closed the descriptors it received: the pipes see EOF.
        assert read_to_eof(out_r) == "" and read_to_eof(err_r) == ""

    zygote.send({**good, "id": 12}, [])
    assert "2 file descriptors" in zygote.reply_to(12)["error"]

    worker = zygote.spawn(good["argv"], dict(good["env"]))
    assert zygote.exit_of(worker.pid)["code"] == 2
    assert zygote.proc.poll() is None


def test_a_worker_that_cannot_enter_its_cwd_exits_127(sock_dir, zygote):
    missing = sock_dir / "missing"
    worker = zygote.spawn([*SERVER, "--adapter", "sample_adapters.ProcessInfo"], worker_env(), cwd=str(missing))
    assert zygote.exit_of(worker.pid) == {"exit": worker.pid, "code": 127}
    err = read_to_eof(worker.stderr)
    assert "cannot change to directory" in err and str(missing) in err


def test_closing_the_control_connection_ends_the_zygote_and_its_workers(sock_dir, zygote):
    address = f"unix:{sock_dir / 'w.sock'}"
    worker = zygote.spawn([*SERVER, "--adapter", "sample_adapters.CleanupRecorder", "--address", address], worker_env())
    assert read_line(worker.stdout) == f"SNAKEPIT_READY {address}"

    zygote.sock.close()
    assert zygote.proc.wait(WAIT_S) == 0, zygote.stderr_text()
    read_to_eof(worker.stdout)  # the worker died (parent-death signal), closing its end
    wait_gone(worker.pid)
    assert read_to_eof(zygote.stdout) == ""  # nothing after the READY line


def test_a_zygote_that_compiled_the_package_leaves_its_bytecode_for_the_next(sock_dir: Path, tmp_path: Path) -> None:
    # Workers (and so zygotes) run with PYTHONDONTWRITEBYTECODE: without
    # this, every zygote would compile the whole package again.
    shutil.copytree(PYTHON_DIR / "snakepit_bridge", tmp_path / "snakepit_bridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    z = Zygote(sock_dir, bridge_dir=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1"})
    try:
        pycs = tmp_path / "snakepit_bridge" / "_internal" / "__pycache__"
        deadline = time.monotonic() + WAIT_S
        while not list(pycs.glob("fork_server.*.pyc")):
            assert time.monotonic() < deadline, f"no bytecode written\n{z.stderr_text()}"
            time.sleep(0.05)
    finally:
        z.close()


def test_bytecode_is_missing_for_a_module_compiled_from_source_or_older_than_it(tmp_path: Path) -> None:
    package = tmp_path / "pkg_for_bytecode"
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = package / "mod.py"
    source.write_text("x = 1\n")
    sys.path.insert(0, str(tmp_path))
    saved = sys.dont_write_bytecode
    try:
        sys.dont_write_bytecode = True
        importlib.import_module("pkg_for_bytecode.mod")
        assert _bytecode_missing(str(package))
        assert compileall.compile_dir(str(package), quiet=2)
        assert not _bytecode_missing(str(package))
        # Older than the bytecode, yet not what it was compiled from.
        earlier = os.stat(source).st_mtime - 10
        os.utime(source, (earlier, earlier))
        assert _bytecode_missing(str(package))
    finally:
        sys.dont_write_bytecode = saved
        sys.path.remove(str(tmp_path))
        for name in ("pkg_for_bytecode.mod", "pkg_for_bytecode"):
            sys.modules.pop(name, None)
