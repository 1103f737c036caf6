"""A plain Python grpcio client calling Snakepit workers directly, for
bench/pool_throughput.exs: the same ExecuteTool("ping") the pool sends, over
the same Unix sockets, with `concurrency` calls in flight spread over the
workers, each reply's result decoded from JSON as Snakepit decodes it.
Prints one JSON line: calls made, ops/s, p50/p99 latency (us) and this
client's CPU time per call (us, CLOCK_PROCESS_CPUTIME_ID).

Two modes:

* ``--mode open`` (default): each of the ``concurrency`` callers sticks to one
  worker's channel, so a worker may have several calls in flight at once
  (HTTP/2 multiplexing lets the server batch them);
* ``--mode pooled``: like Snakepit's process profile, at most one call is in
  flight per worker; callers take a free worker from a queue and give it back.

The ``--warmup`` calls run first, as a phase of their own that has finished
(every call answered) before the measured calls start. With ``--handshake``
the client then prints ``warm`` and waits for a line on stdin before the
measured calls, prints ``done <json>`` when they have all been answered, and
waits for another line before it closes its channels and exits: the caller
(bench/pool_throughput.exs) reads the workers' and this process's CPU
between the two, with everything idle, so that the window holds the
measured calls and nothing else.

    python bench/grpc_client.py --address unix:/a.sock --address unix:/b.sock \
        --concurrency 8 --calls 4000 --mode pooled
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import grpc
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc


async def run(
    addresses: list[str], concurrency: int, calls: int, warmup: int, mode: str, handshake: bool
) -> dict:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    stubs = [pb_grpc.BridgeServiceStub(c) for c in channels]
    free: asyncio.Queue = asyncio.Queue()
    for stub in stubs:
        free.put_nowait(stub)
    request = pb.ExecuteToolRequest(tool_name="ping", args_json=b"{}")
    # Snakepit's workers answer only calls carrying the VM's secret.
    secret = os.environ.get("SNAKEPIT_AUTH_TOKEN")
    metadata = [("x-snakepit-auth", secret)] if secret else None

    async def phase(n: int) -> list[int]:
        """n calls from `concurrency` callers; the latency of each (us)."""
        remaining = n
        latencies: list[int] = []

        async def caller(i: int) -> None:
            nonlocal remaining
            own = stubs[i % len(stubs)]
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter_ns()
                stub = await free.get() if mode == "pooled" else own
                try:
                    reply = await stub.ExecuteTool(request, metadata=metadata)
                finally:
                    if mode == "pooled":
                        free.put_nowait(stub)
                if not reply.success:
                    raise RuntimeError(reply.error.message)
                json.loads(reply.result_json)
                latencies.append((time.perf_counter_ns() - started) // 1000)

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        return latencies

    await phase(warmup)
    if handshake:
        # Blocks the event loop on purpose: no call is in flight.
        print("warm", flush=True)
        sys.stdin.readline()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    latencies = await phase(calls)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    latencies.sort()
    n = len(latencies)
    result = {
        "calls": n,
        "ops": n / wall,
        "p50_us": latencies[n // 2],
        "p99_us": latencies[min(n - 1, int(n * 0.99))],
        "cpu_us_per_call": cpu * 1e6 / n,
    }
    if handshake:
        print("done " + json.dumps(result), flush=True)
        sys.stdin.readline()
    else:
        print(json.dumps(result), flush=True)
    for c in channels:
        await c.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", action="append", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--mode", choices=("open", "pooled"), default="open")
    parser.add_argument("--handshake", action="store_true", help="wait on stdin around the measured calls")
    args = parser.parse_args()
    asyncio.run(run(args.address, args.concurrency, args.calls, args.warmup, args.mode, args.handshake))


if __name__ == "__main__":
    main()
