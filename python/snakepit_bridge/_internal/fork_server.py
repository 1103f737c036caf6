"""Fork server ("zygote") for Python workers.

A worker spends most of its startup importing grpc, protobuf and the bridge.
The fork server pays that once per pool: it imports :mod:`snakepit_bridge.server`
and then forks a ready worker for each request, so a worker starts from an
interpreter that already has everything loaded. The zygote itself creates no
threads, event loops or grpc objects; those would not survive a fork.

    python -m snakepit_bridge.fork_server --control PATH
        [--snakepit-run-id X] [--instance-name N] [--instance-token T]

The run id and instance flags are not used; they are accepted so that the
process's command line, which forked workers inherit, carries them for the
OS-level cleanup that finds processes by them. Unknown flags are ignored.

The zygote listens on an AF_UNIX SOCK_SEQPACKET socket at ``PATH``, prints
``SNAKEPIT_FORK_SERVER_READY`` on stdout (nothing else goes to stdout), accepts
one connection (the controller) and removes ``PATH``. Each message on that
connection is one UTF-8 JSON object:

* controller -> zygote: ``{"id": int, "argv": [str, ...], "env": [[k, v], ...],
  "cwd": str | null}`` with exactly two file descriptors (SCM_RIGHTS), the
  write ends of the worker's stdout and stderr. ``argv`` is the command line
  a directly spawned worker would get, ``[python, "-m",
  "snakepit_bridge.server", ...worker args]``; ``argv[0]`` is informational.
* zygote -> controller: ``{"id": id, "pid": pid}`` once forked, or
  ``{"id": id, "error": str}`` (``id`` is null when the request had none).
* zygote -> controller: ``{"exit": pid, "code": int}`` or ``{"exit": pid,
  "signal": int}`` when a worker it forked is reaped; always after the pid
  reply for that worker.

A zygote that had to compile the package (no bytecode next to its sources:
workers run with ``PYTHONDONTWRITEBYTECODE``) has a child at the lowest
priority write it, for the next zygote; nothing else is written.

EOF on the connection ends the zygote at once. Its workers run in their own
sessions and die with it (parent-death signal SIGKILL); the controller deals
with their process groups.

A forked worker gets the request's environment, cwd, stdout/stderr and a
``sys.path`` rebuilt from the request's ``PYTHONPATH`` (status 127 if it
cannot enter the cwd, or cannot set up before running). What a fresh
interpreter fixes at startup from the environment and cannot be redone after
a fork (the hash seed, ``-X`` options, modules the zygote already imported)
is the zygote's: start it with the same environment as its workers.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gc
import importlib
import importlib.util
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Mapping, NoReturn, Sequence

from . import adapter_loading, auth, command_line

READY_LINE = "SNAKEPIT_FORK_SERVER_READY"
MAX_MESSAGE_BYTES = 1 << 20
MAX_FDS = 4  # more than the 2 expected, so a wrong count is seen (and closed)
PR_SET_PDEATHSIG = 1
EXIT_SETUP_FAILED = 127
SERVER_MODULES = ("snakepit_bridge.server", "snakepit_bridge")
# Handlers the zygote changes; a worker gets back what the zygote started with.
CHANGED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE)


class ControllerGone(Exception):
    """The control connection is closed or broken."""


class BadRequest(Exception):
    def __init__(self, message: str, request_id: int | None = None):
        super().__init__(message)
        self.request_id = request_id


@dataclass
class SpawnRequest:
    id: int
    worker_args: list[str]
    env: dict[str, str]
    cwd: str | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _worker_args(argv: Any) -> list[str]:
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("'argv' must be a non-empty list of strings")
    args = argv[1:]
    if args[:1] == ["-m"]:
        if args[1:2] and args[1] in SERVER_MODULES:
            return args[2:]
        raise ValueError(f"the fork server only runs {SERVER_MODULES[0]}, not -m {' '.join(args[1:2])}")
    return args


def _env(env: Any) -> dict[str, str]:
    if not isinstance(env, list):
        raise ValueError("'env' must be a list of [name, value] pairs")
    result: dict[str, str] = {}
    for pair in env:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"bad env entry {pair!r}: expected [name, value] strings")
        name, value = pair
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"bad env entry {name!r}")
        result[name] = value
    return result


def parse_request(data: bytes, fds: Sequence[int], token: str | None = None) -> SpawnRequest:
    """Decode one request; raises BadRequest (with the id when there is one).

    With ``token`` (the VM's secret), a request that does not carry it in
    ``"token"`` is refused before anything else is looked at.
    """
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadRequest(f"request is not JSON: {exc}") from exc
    if not isinstance(message, dict) or not _is_int(message.get("id")):
        raise BadRequest("request must be an object with an integer 'id'")
    request_id = message["id"]
    presented = message.get("token")
    if token and not (isinstance(presented, str) and auth.valid(presented, token)):
        raise BadRequest("unauthenticated: the request does not carry this VM's secret", request_id)
    try:
        if len(fds) != 2:
            raise ValueError(f"expected 2 file descriptors (stdout, stderr), got {len(fds)}")
        cwd = message.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
            raise ValueError("'cwd' must be a path string or null")
        return SpawnRequest(request_id, _worker_args(message.get("argv")), _env(message.get("env")), cwd)
    except ValueError as exc:
        raise BadRequest(str(exc), request_id) from exc


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pythonpath(env: Mapping[str, str]) -> list[str]:
    # As a fresh interpreter reads it: relative and empty entries are
    # resolved against the cwd.
    value = env.get("PYTHONPATH", "")
    return [os.path.abspath(p) for p in value.split(os.pathsep)] if value else []


def _site_path() -> list[str]:
    """sys.path without the entries from the zygote's cwd and PYTHONPATH."""
    rest = sys.path[1:]
    own = _pythonpath(os.environ)
    if rest[: len(own)] == own:
        return rest[len(own):]
    return [p for p in rest if p not in own]


def _std_stream(fd: int, like: Any, *, unbuffered: bool, line_buffering: bool) -> io.TextIOWrapper:
    raw = io.FileIO(fd, "w", closefd=False)
    buffer: Any = raw if unbuffered else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffer, encoding=like.encoding, errors=like.errors, newline="\n",
                            line_buffering=line_buffering, write_through=unbuffered)


def _exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _bytecode_missing(package: str) -> bool:
    """Was any module of ``package`` imported here from its source, for
    want of bytecode next to it that matches it (the check Python makes)?"""
    for module in list(sys.modules.values()):
        source = getattr(module, "__file__", None)
        cached = getattr(module, "__cached__", None)
        if not (source and cached and source.startswith(package + os.sep)):
            continue
        try:
            with open(cached, "rb") as pyc:
                header = pyc.read(16)
            stat = os.stat(source)
        except OSError:
            return True
        if header[:4] != importlib.util.MAGIC_NUMBER:
            return True
        if int.from_bytes(header[4:8], "little") != 0:
            continue  # checked by hash, not by time: Python's business
        if header[8:16] != _source_stamp(stat):
            return True
    return False


def _source_stamp(stat: os.stat_result) -> bytes:
    """A timestamp pyc's record of its source: mtime and size, 32 bits each."""
    mtime = int(stat.st_mtime) & 0xFFFFFFFF
    return mtime.to_bytes(4, "little") + (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little")


class ForkServer:
    def __init__(self) -> None:
        self.pid = os.getpid()
        # The VM's secret, out of the environment (the workers get theirs
        # in each request's environment).
        self.token = auth.load_from_env()
        self.children: set[int] = set()
        self.initial_handlers = {sig: signal.getsignal(sig) for sig in CHANGED_SIGNALS}
        self.site_path = _site_path()
        self.wakeup_r = self.wakeup_w = -1
        # Loaded here so that workers do not pay for it.
        self.prctl = ctypes.CDLL(None, use_errno=True).prctl

    # ------------------------------------------------------------ zygote

    def serve(self, control_path: str) -> int:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(control_path)
        listener.listen(1)
        # The bundled default adapter (stdlib and the bridge only) is
        # imported, and its tools worked out, once here rather than in every
        # worker that uses it.
        with contextlib.suppress(Exception):
            adapter_loading.preload(adapter_loading.DEFAULT_ADAPTER)
        # Everything imported so far is moved out of the collector's sight:
        # a forked worker's collections then never touch (and so never copy)
        # the zygote's pages.
        gc.collect()
        gc.freeze()
        self.compile_package_aside(listener)
        sys.stdout.write(READY_LINE + "\n")
        sys.stdout.flush()
        try:
            conn, _ = listener.accept()
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(control_path)
        # Only the VM that started us may control us: the connection must
        # come from our parent (and each request carry the VM's secret).
        peer_pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if peer_pid != os.getppid():
            sys.stderr.write(f"snakepit fork server: refused a controller that is not our parent (pid {peer_pid})\n")
            conn.close()
            return 1

        # SIGCHLD only wakes up select() through the wakeup fd; all reaping
        # happens in the loop, so a pid reply always precedes its exit message.
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)

        with conn:
            try:
                while True:
                    readable, _, _ = select.select([conn.fileno(), self.wakeup_r], [], [])
                    if self.wakeup_r in readable:
                        with contextlib.suppress(BlockingIOError):
                            while os.read(self.wakeup_r, 512):
                                pass
                        self.reap(conn)
                    if conn.fileno() in readable:
                        self.handle_message(conn)
            except ControllerGone:
                return 0

    def compile_package_aside(self, listener: socket.socket) -> None:
        """Have this package's bytecode written next to its sources where it
        is missing or stale, by a child at the lowest priority, so that the
        next fork server (or directly spawned worker) reads it instead of
        compiling the package again: about a quarter of a fork server's
        start. Workers run with PYTHONDONTWRITEBYTECODE, so nothing else
        would ever write it; only the bridge's own files are written, never
        an adapter's. Where they cannot be written, nothing happens."""
        package = os.path.dirname(os.path.dirname(__file__))
        if not _bytecode_missing(package):
            return
        try:
            pid = os.fork()
        except OSError:
            return
        if pid != 0:
            return
        try:
            listener.close()
            self.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
            os.nice(19)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # stdout is the zygote's handshake
                os.dup2(devnull, fd)
            # A fresh interpreter: this one's command line carries the run
            # id, which marks the run's workers and fork servers.
            os.execv(sys.executable, [sys.executable, "-m", "compileall", "-qq", package])
        finally:
            os._exit(0)

    def handle_message(self, conn: socket.socket) -> None:
        try:
            data, fds, flags, _ = socket.recv_fds(conn, MAX_MESSAGE_BYTES, MAX_FDS)
        except ConnectionResetError as exc:  # the controller closed with replies unread
            raise ControllerGone from exc
        except OSError as exc:
            sys.stderr.write(f"snakepit fork server: control connection failed: {exc}\n")
            raise ControllerGone from exc
        if not data and not fds:
            raise ControllerGone  # EOF
        try:
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise BadRequest("request truncated (too large, or too many file descriptors)")
            request = parse_request(data, fds, self.token)
        except BadRequest as exc:
            _close_all(fds)
            self.send(conn, {"id": exc.request_id, "error": str(exc)})
            return
        self.spawn(conn, request, fds)

    def spawn(self, conn: socket.socket, request: SpawnRequest, fds: list[int]) -> None:
        sys.stdout.flush()  # nothing buffered may be written again by the child
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            _close_all(fds)
            self.send(conn, {"id": request.id, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self.become_worker(conn, request, fds)
        _close_all(fds)
        self.children.add(pid)
        self.send(conn, {"id": request.id, "pid": pid})

    def reap(self, conn: socket.socket) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue
            self.children.discard(pid)
            if os.WIFSIGNALED(status):
                self.send(conn, {"exit": pid, "signal": os.WTERMSIG(status)})
            else:
                self.send(conn, {"exit": pid, "code": os.WEXITSTATUS(status)})

    @staticmethod
    def send(conn: socket.socket, message: dict[str, Any]) -> None:
        try:
            conn.send(json.dumps(message).encode("utf-8"))
        except OSError as exc:
            sys.stderr.write(f"snakepit fork server: cannot reply to the controller: {exc}\n")
            raise ControllerGone from exc

    # ------------------------------------------------------------ child

    def become_worker(self, conn: socket.socket, request: SpawnRequest, fds: list[int]) -> NoReturn:
        """Runs in the forked child; never returns into the zygote's loop."""
        code = 1
        try:
            self.detach(conn, fds)
            self.adopt(request)
            code = command_line.main(request.worker_args)
        except SystemExit as exc:  # argparse errors, --help, sys.exit() in an adapter
            code = _exit_status(exc)
        except BaseException:  # noqa: BLE001
            with contextlib.suppress(BaseException):
                traceback.print_exc()
            code = 1
        finally:
            with contextlib.suppress(BaseException):
                # As command_line.run(): a normal exit unless tool threads linger.
                if command_line.settle_threads():
                    atexit._run_exitfuncs()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def detach(self, conn: socket.socket, fds: list[int]) -> None:
        """New session, parent-death signal, clean signal state and stdio."""
        os.setsid()
        if self.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL)) != 0:
            os._exit(EXIT_SETUP_FAILED)
        if os.getppid() != self.pid:  # the zygote died before prctl took effect
            os._exit(EXIT_SETUP_FAILED)
        signal.set_wakeup_fd(-1)
        for sig, handler in self.initial_handlers.items():
            signal.signal(sig, handler)

        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        conn.close()
        # The received fds, the wakeup pipe, /dev/null and whatever the zygote
        # inherited from its launcher: a fresh worker would have none of them.
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))

    def adopt(self, request: SpawnRequest) -> None:
        """Take on the request's environment, as a fresh interpreter would."""
        env = request.env
        unbuffered = bool(env.get("PYTHONUNBUFFERED"))
        sys.stdout = sys.__stdout__ = _std_stream(  # type: ignore[misc]
            1, sys.__stdout__, unbuffered=unbuffered, line_buffering=False
        )
        sys.stderr = sys.__stderr__ = _std_stream(  # type: ignore[misc]
            2, sys.__stderr__, unbuffered=unbuffered, line_buffering=not unbuffered
        )
        # Changed, not rebuilt: a worker's environment is mostly its fork
        # server's, and each variable set or unset is a libc call.
        for name in [name for name in os.environ if name not in env]:
            del os.environ[name]
        for name, value in env.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
        if request.cwd is not None:
            try:
                os.chdir(request.cwd)
            except OSError as exc:
                sys.stderr.write(f"snakepit fork server: cannot change to directory {request.cwd!r}: {exc}\n")
                sys.stderr.flush()
                os._exit(EXIT_SETUP_FAILED)
        # `python -m` puts the cwd first, then PYTHONPATH.
        sys.path[:] = [os.getcwd(), *_pythonpath(env), *self.site_path]
        importlib.invalidate_caches()
        # Nothing to re-seed: `random` re-seeds itself in a forked child
        # (os.register_at_fork) and the bridge keeps no per-process ids.
        sys.argv = [command_line.__file__, *request.worker_args]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m snakepit_bridge.fork_server",
                                     description="Fork server for snakepit_bridge workers.")
    parser.add_argument("--control", required=True, help="path of the AF_UNIX SOCK_SEQPACKET control socket")
    parser.add_argument("--snakepit-run-id", "--run-id", dest="run_id", default="")
    parser.add_argument("--instance-name", default="")
    parser.add_argument("--instance-token", default="")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, _unknown = build_parser().parse_known_args(argv)
    try:
        return ForkServer().serve(args.control)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    exit_code = main()
    sys.stderr.flush()
    os._exit(exit_code)  # at once: no interpreter teardown to wait for
