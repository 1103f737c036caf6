"""What the transport secret costs a worker per call.

Starts two real workers (``python -m snakepit_bridge.server``, the bundled
ShowcaseAdapter) on Unix sockets, one with a secret in its environment (so
it checks every call) and one without, and calls ``ping`` on each with one
call in flight, alternating rounds. The worker's CPU is read from
``/proc/PID/task/*/schedstat`` (nanoseconds, all threads) around each round,
so warm-up and start-up are outside the window.

    .venv/bin/python bench/auth_overhead.py [--calls 3000] [--rounds 5]

Prints the median CPU per call of each and the difference, and writes them
to bench/results/auth_overhead.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc

SECRET = "5e" * 32


def cpu_ns(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended
    return total


def start_worker(sock: str, secret: str | None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), PYTHONUNBUFFERED="1")
    env.pop("SNAKEPIT_AUTH_TOKEN", None)
    if secret:
        env["SNAKEPIT_AUTH_TOKEN"] = secret
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakepit_bridge.server", "--address", f"unix:{sock}"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("SNAKEPIT_READY"), line
    return proc


async def calls(address: str, n: int, metadata: list[tuple[str, str]]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        request = pb.ExecuteToolRequest(tool_name="ping", args_json=b"{}")
        for _ in range(n):
            reply = await stub.ExecuteTool(request, metadata=metadata)
            assert reply.success


def round_cpu_us(proc: subprocess.Popen, address: str, n: int, metadata: list[tuple[str, str]]) -> float:
    asyncio.run(calls(address, 200, metadata))  # warm-up, outside the window
    before = cpu_ns(proc.pid)
    asyncio.run(calls(address, n, metadata))
    return (cpu_ns(proc.pid) - before) / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spa", dir="/tmp") as tmp:
        checked = start_worker(f"{tmp}/checked.sock", SECRET)
        open_ = start_worker(f"{tmp}/open.sock", None)
        try:
            results: dict[str, list[float]] = {"with the check": [], "without": []}
            for r in range(args.rounds):
                order = [("with the check", checked, f"unix:{tmp}/checked.sock", [("x-snakepit-auth", SECRET)]),
                         ("without", open_, f"unix:{tmp}/open.sock", [])]
                if r % 2:
                    order.reverse()
                for label, proc, address, metadata in order:
                    results[label].append(round_cpu_us(proc, address, args.calls, metadata))
        finally:
            for proc in (checked, open_):
                proc.terminate()
                proc.wait()

    with_check = statistics.median(results["with the check"])
    without = statistics.median(results["without"])
    lines = [
        (
            f"auth_overhead  {time.strftime('%Y-%m-%d %H:%M:%S')}  calls/round={args.calls}  rounds={args.rounds}  "
            f"(worker CPU per call, all threads, from schedstat; median of alternating rounds)"
        ),
        f"with the check   {with_check:8.1f} us   rounds: {', '.join(f'{x:.1f}' for x in results['with the check'])}",
        f"without          {without:8.1f} us   rounds: {', '.join(f'{x:.1f}' for x in results['without'])}",
        f"difference       {with_check - without:8.1f} us per call ({(with_check - without) * 100 / without:+.1f}%)",
    ]
    print("\n".join(lines))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "auth_overhead.txt").write_text("\n".join(lines) + "\n")
    print("written to bench/results/auth_overhead.txt")


if __name__ == "__main__":
    main()
