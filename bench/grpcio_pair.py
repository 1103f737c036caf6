"""The leanest grpcio client/server pair, the yardstick of
bench/call_transport.exs: bare ``grpc.aio`` servers with generic raw-bytes
handlers (no protobuf, no adapter, no auth) and one ``grpc.aio`` client that
keeps at most one call in flight per server (the process profile's
discipline: a caller takes a free server, calls, gives it back).

    python bench/grpcio_pair.py --servers 2 --concurrency 8 --calls 4000 \
        --streams 16 --stream-length 1000

Starts the servers as subprocesses on Unix sockets in a temporary
directory, warms up, then measures, in one window opened after the warm-up:
unary calls (ops/s, p50/p99 latency) and, apart, server streams (messages/s).
CPU per call or message, for the client process and for the servers, is the
sum of every thread's time in /proc/PID/task/TID/schedstat (ns). Prints one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc

CALL = "/bench.Pair/Call"
STREAM = "/bench.Pair/Stream"
REPLY = b'{"result":3}'
ITEM = b'{"index":0,"data":"item_0"}'


# ------------------------------------------------------------------ server


async def serve(address: str) -> None:
    async def call(request: bytes, _context: Any) -> bytes:
        return REPLY

    async def stream(request: bytes, _context: Any) -> Any:
        for _ in range(int(request or b"1")):
            yield ITEM

    handler = grpc.method_handlers_generic_handler(
        "bench.Pair",
        {
            "Call": grpc.unary_unary_rpc_method_handler(call),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    await server.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    await server.wait_for_termination()


# ------------------------------------------------------------------ CPU


def cpu_ns(pids: list[int]) -> int:
    """Time every thread of ``pids`` has run, from schedstat (ns)."""
    total = 0
    for pid in pids:
        task_dir = f"/proc/{pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # the thread ended meanwhile
    return total


# ------------------------------------------------------------------ client


async def unary_round(stubs: list[Any], concurrency: int, calls: int) -> list[float]:
    free: asyncio.Queue[Any] = asyncio.Queue()
    for stub in stubs:
        free.put_nowait(stub)
    latencies: list[float] = []
    per_caller = calls // concurrency

    async def caller() -> None:
        for _ in range(per_caller):
            started = time.perf_counter()
            stub = await free.get()
            try:
                reply = await stub(b"{}")
                json.loads(reply)  # Snakepit decodes its results too
            finally:
                free.put_nowait(stub)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


async def stream_round(stubs: list[Any], concurrency: int, streams: int, length: int) -> int:
    free: asyncio.Queue[Any] = asyncio.Queue()
    for stub in stubs:
        free.put_nowait(stub)
    todo = list(range(streams))
    received = 0

    async def caller() -> None:
        nonlocal received
        while todo:
            todo.pop()
            stub = await free.get()
            try:
                async for message in stub(str(length).encode()):
                    json.loads(message)
                    received += 1
            finally:
                free.put_nowait(stub)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return received


async def measure(args: argparse.Namespace, addresses: list[str], server_pids: list[int]) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    unary = [c.unary_unary(CALL) for c in channels]
    streaming = [c.unary_stream(STREAM) for c in channels]
    me = [os.getpid()]

    await unary_round(unary, args.concurrency, args.warmup)
    await stream_round(streaming, args.concurrency, len(addresses), 100)

    calls = (args.calls // args.concurrency) * args.concurrency
    client0, server0, wall0 = cpu_ns(me), cpu_ns(server_pids), time.perf_counter()
    latencies = await unary_round(unary, args.concurrency, calls)
    client1, server1, wall1 = cpu_ns(me), cpu_ns(server_pids), time.perf_counter()
    received = await stream_round(streaming, args.concurrency, args.streams, args.stream_length)
    client2, server2, wall2 = cpu_ns(me), cpu_ns(server_pids), time.perf_counter()

    for channel in channels:
        await channel.close()
    latencies.sort()
    per_msg = max(received, 1)
    return {
        "calls": calls,
        "ops": calls / (wall1 - wall0),
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
        "client_cpu_us": (client1 - client0) / 1e3 / calls,
        "server_cpu_us": (server1 - server0) / 1e3 / calls,
        "messages": received,
        "msgs_per_s": received / (wall2 - wall1),
        "client_cpu_us_per_msg": (client2 - client1) / 1e3 / per_msg,
        "server_cpu_us_per_msg": (server2 - server1) / 1e3 / per_msg,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help="(internal) run one server on this address")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--stream-length", type=int, default=1000)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return

    with tempfile.TemporaryDirectory(prefix="grpcio-pair-") as tmp:
        addresses = [f"unix:{tmp}/s{i}.sock" for i in range(args.servers)]
        servers = [
            subprocess.Popen([sys.executable, __file__, "--serve", a], stdout=subprocess.PIPE, text=True)
            for a in addresses
        ]
        try:
            for server in servers:
                assert server.stdout is not None and server.stdout.readline().strip() == "READY"
            result = asyncio.run(measure(args, addresses, [s.pid for s in servers]))
        finally:
            for server in servers:
                server.terminate()
                server.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
