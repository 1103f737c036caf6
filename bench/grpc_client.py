"""A plain Python grpcio client calling Snakepit workers directly, for
bench/pool_throughput.exs: the same ExecuteTool("ping") the pool sends, over
the same Unix sockets, with `concurrency` calls in flight spread over the
workers. Prints one JSON line: ops/s, p50/p99 latency (us) and this client's
CPU time per call (us).

Two modes:

* ``--mode open`` (default): each of the ``concurrency`` callers sticks to one
  worker's channel, so a worker may have several calls in flight at once
  (HTTP/2 multiplexing lets the server batch them);
* ``--mode pooled``: like Snakepit's process profile, at most one call is in
  flight per worker; callers take a free worker from a queue and give it back.

    python bench/grpc_client.py --address unix:/a.sock --address unix:/b.sock \
        --concurrency 8 --calls 4000 --mode pooled
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import grpc

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc


async def run(addresses: list[str], concurrency: int, calls: int, warmup: int, mode: str) -> dict:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [pb_grpc.BridgeServiceStub(c) for c in channels]
    free: asyncio.Queue = asyncio.Queue()
    for stub in stubs:
        free.put_nowait(stub)
    request = pb.ExecuteToolRequest(tool_name="ping", args_json=b"{}")
    # Snakepit's workers answer only calls carrying the VM's secret.
    secret = os.environ.get("SNAKEPIT_AUTH_TOKEN")
    metadata = [("x-snakepit-auth", secret)] if secret else None
    latencies: list[int] = []
    remaining = warmup + calls
    # Set when the last warm-up call has been started.
    warmed = asyncio.Event()
    if warmup == 0:
        warmed.set()

    async def caller(i: int) -> None:
        nonlocal remaining
        own = stubs[i % len(stubs)]
        while remaining > 0:
            remaining -= 1
            if remaining == calls:
                warmed.set()
            measured = remaining < calls
            started = time.perf_counter_ns()
            stub = await free.get() if mode == "pooled" else own
            try:
                reply = await stub.ExecuteTool(request, metadata=metadata)
            finally:
                if mode == "pooled":
                    free.put_nowait(stub)
            if not reply.success:
                raise RuntimeError(reply.error.message)
            if measured:
                latencies.append((time.perf_counter_ns() - started) // 1000)

    # Warm-up calls are excluded from the figures by counting.
    cpu0 = wall0 = None
    workers = [asyncio.ensure_future(caller(i)) for i in range(concurrency)]
    await warmed.wait()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*workers)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    for c in channels:
        await c.close()

    latencies.sort()
    n = len(latencies)
    return {
        "calls": n,
        "ops": n / wall,
        "p50_us": latencies[n // 2],
        "p99_us": latencies[min(n - 1, int(n * 0.99))],
        "cpu_us_per_call": cpu * 1e6 / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", action="append", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--mode", choices=("open", "pooled"), default="open")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.address, args.concurrency, args.calls, args.warmup, args.mode))))


if __name__ == "__main__":
    main()
