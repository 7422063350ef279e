"""The client's connection pools: requests per second against the emulator at 16 at once,
one pool of 32 connections (httpx's default transport) against the sharded pools the
client uses (:class:`reconciler.ailake.pools.ShardedTransport`), in one run.

httpcore's pool checks every connection it holds for every request (a system call each),
so one big pool spends its CPU on bookkeeping; a few small ones keep that flat.

    python bench/bench_pools.py [--requests 3000] [--at-once 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx
from benchlib import EmulatorProcess, emulator_services

from reconciler.ailake.pools import ShardedTransport


async def rate(url: str, transport: httpx.AsyncBaseTransport | None, requests: int,
               at_once: int) -> dict[str, float]:
    """Requests per second of ``requests`` GETs, ``at_once`` at a time, and latencies."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(at_once)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, transport=transport, limits=limits) as http:
        async def one(i: int) -> None:
            async with gate:
                started = time.perf_counter()
                await http.get(f"/api/v1/ailake/operations/op-{i}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"per_second": requests / wall, "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p90_ms": latencies[int(len(latencies) * 0.9)] * 1e3}


async def measure(requests: int, at_once: int) -> dict[str, Any]:
    with EmulatorProcess(emulator_services()) as emu:
        await rate(emu.url, None, 200, at_once)  # warm both sides up
        one = await rate(emu.url, None, requests, at_once)
        sharded = await rate(emu.url, ShardedTransport(max_connections=32, verify=False),
                             requests, at_once)
    return {"requests": requests, "at_once": at_once, "one_pool": one, "sharded": sharded,
            "ratio": sharded["per_second"] / one["per_second"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--at-once", type=int, default=16)
    args = parser.parse_args()
    result = asyncio.run(measure(args.requests, args.at_once))
    one, sharded = result["one_pool"], result["sharded"]
    print(f"one pool of 32: {one['per_second']:.0f} requests/s (p50 {one['p50_ms']:.1f} ms); "
          f"sharded: {sharded['per_second']:.0f} requests/s (p50 {sharded['p50_ms']:.1f} ms); "
          f"{result['ratio']:.2f}x", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
