"""End-to-end reconcile cost against the emulator, and memory for 10 000 manifests.

1. Converge N=200 manifests (commands of 0 s to 100 ms, dependency chains of up to 5,
   four services) with the :class:`~reconciler.execution.engine.Engine` in-process against an
   emulator served by ``start_background`` (no faults, dedup off so a re-POST would
   show): wall time, API requests by endpoint, requests per manifest, and the
   exactly-once check (one execution per manifest).
2. One more reconcile of the converged set: API requests (must be 0) and its duration.
3. Memory, in a fresh child process: peak RSS (``resource.getrusage``) after loading
   and planning 10 000 manifests with the real loader, and tracemalloc's peak for
   planning them. tracemalloc slows the pure-Python YAML loader ~6x (about 2.5 min for
   10 000), so its peak for *loading* is measured on 500 manifests and scaled by 20
   (marked "est."; loading is linear); ``--full-trace`` traces the whole 10 000 load.

The engine polls as the daemon does (from 1 s, doubling) but with wider limits (64 in
flight, 16 per service; the daemon's defaults 16/4 make it ~19 s: ``--max-in-flight 16
--max-per-service 4``) and no API rate limit, so the figures are the engine's, not the
10 req/s default limit's.

    /work/venv/bin/python bench/bench_reconcile.py [--manifests 200] [--full-trace]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from benchlib import (
    COMMANDS,
    SERVICE_IDS,
    SERVICE_NAMES,
    manifest_docs,
    recorded_states,
    table,
    utcnow,
    write_manifests,
)

from reconciler.ailake.client import AiLakeClient, ClientSettings, RequestRecord
from reconciler.ailake.emulator import EmulatorConfig, start_background
from reconciler.execution.engine import Engine, EngineSettings
from reconciler.model.manifest import LoadResult
from reconciler.planning.planner import Limits, plan
from reconciler.source.loader import load_manifests
from reconciler.store.sqlite import Store


def emulator_config(seed: int) -> EmulatorConfig:
    rng = random.Random(seed)
    services = [{"id": sid, "name": name,
                 "commands": {c: {"duration": f"{rng.choice([0, 20, 50, 100])}ms"}
                              for c in COMMANDS}}
                for sid, name in zip(SERVICE_IDS, SERVICE_NAMES, strict=True)]
    return EmulatorConfig.from_dict({"dedup": False, "services": services}, source="bench")


def settled(engine: Engine, load: LoadResult) -> bool:
    current = engine.plan(load)
    in_flight = any(r.in_flight for r in engine.store.intents().values())
    return not in_flight and not current.changes and all(v.settled for v in current.views)


async def converge(engine: Engine, load: LoadResult) -> int:
    """The daemon's loop, minus its sleeps' jitter: reconcile until settled."""
    passes = 0
    while True:
        await engine.reconcile(load)
        passes += 1
        if settled(engine, load):
            return passes
        current = engine.plan(load)
        if current.executable:
            continue
        wake = current.wake_at
        delay = (wake - engine.clock()).total_seconds() if wake else 0.05
        await asyncio.sleep(min(max(delay, 0.0), 1.0))


async def reconcile_bench(count: int, max_in_flight: int, max_per_service: int) -> None:
    requests: list[RequestRecord] = []
    with tempfile.TemporaryDirectory() as tmp, start_background(emulator_config(3)) as emu:
        docs = manifest_docs(count, policies=False)
        load = load_manifests(write_manifests(Path(tmp), docs))
        assert not load.problems and len(load.commands) == count
        settings = ClientSettings(base_url=emu.url, rate_limit=None)
        store = Store(Path(tmp) / "state.db")
        async with AiLakeClient(settings, observer=requests.append) as client:
            engine = Engine(client, store, settings=EngineSettings(
                limits=Limits(max_in_flight, max_per_service)))
            started = time.perf_counter()
            passes = await converge(engine, load)
            wall = time.perf_counter() - started
            converged_requests = list(requests)
            requests.clear()
            started = time.perf_counter()
            await engine.reconcile(load)
            again = time.perf_counter() - started
            again_requests = list(requests)
        store.close()
        executions = Counter(e["operationId"] for e in emu.state.list_executions())

    assert len(executions) == count and set(executions.values()) == {1}, executions
    by_endpoint = Counter(f"{r.method} {r.endpoint}" for r in converged_requests)
    codes = Counter(r.code for r in converged_requests)
    total = len(converged_requests)
    print(f"converge {count} manifests (emulator in a thread of this process; engine "
          f"limits {max_in_flight} in flight, {max_per_service} per service; no rate limit)")
    rows = [(endpoint, n, f"{n / count:.2f}") for endpoint, n in by_endpoint.most_common()]
    rows.append(("total", total, f"{total / count:.2f}"))
    print(table(("endpoint", "requests", "per manifest"), rows))
    print(f"wall time {wall:.2f} s in {passes} passes; HTTP codes {dict(codes)}; "
          f"executions {sum(executions.values())} (one per manifest)")
    print(f"reconcile of the converged set: {len(again_requests)} API requests, "
          f"{again * 1e3:.1f} ms")
    assert not again_requests, again_requests


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_child(count: int, full_trace: bool) -> dict[str, float]:
    """Run in a fresh process: load + plan ``count`` manifests, report memory."""
    out: dict[str, float] = {"baseline_rss": rss_mib()}
    with tempfile.TemporaryDirectory() as tmp:
        docs = manifest_docs(count)
        folder = write_manifests(Path(tmp), docs)
        del docs
        gc.collect()
        out["before_rss"] = rss_mib()
        if full_trace:
            tracemalloc.start()
        started = time.perf_counter()
        load = load_manifests(folder)
        out["load_s"] = time.perf_counter() - started
        now = utcnow()
        records = recorded_states(load.commands, now)
        if not full_trace:
            tracemalloc.start()
        started = time.perf_counter()
        current = plan(load.commands, records, now)
        out["plan_s"] = time.perf_counter() - started
        out["trace_peak"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        out["peak_rss"] = rss_mib()
        assert len(current.views) >= count  # plus the orphans
        if not full_trace:  # tracemalloc peak of loading 1/20 of them, scaled
            small = write_manifests(Path(tmp) / "small", manifest_docs(count // 20))
            gc.collect()
            tracemalloc.start()
            load_manifests(small)
            out["load_trace_peak_est"] = tracemalloc.get_traced_memory()[1] / 2**20 * 20
            tracemalloc.stop()
    return out


def memory_bench(count: int, full_trace: bool) -> None:
    argv = [sys.executable, __file__, "--memory-child", str(count)]
    if full_trace:
        argv.append("--full-trace")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"memory child failed:\n{proc.stderr}")
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nmemory, {count:,} manifests (fresh process; load {m['load_s']:.1f} s, "
          f"plan {m['plan_s'] * 1e3:.0f} ms)")
    rows = [
        ("peak RSS, interpreter + imports", f"{m['baseline_rss']:.0f} MiB"),
        ("peak RSS, after load + plan", f"{m['peak_rss']:.0f} MiB"),
        ("  of which load + plan", f"{m['peak_rss'] - m['before_rss']:.0f} MiB"),
    ]
    if full_trace:
        rows.append(("tracemalloc peak, load + plan", f"{m['trace_peak']:.0f} MiB"))
    else:
        rows.append(("tracemalloc peak, plan", f"{m['trace_peak']:.1f} MiB"))
        rows.append(("tracemalloc peak, load (est. 20 x 1/20)",
                     f"{m['load_trace_peak_est']:.0f} MiB"))
    print(table(("measure", "value"), rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifests", type=int, default=200)
    parser.add_argument("--memory-manifests", type=int, default=10_000)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--max-per-service", type=int, default=16)
    parser.add_argument("--full-trace", action="store_true")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.full_trace)))
        return 0
    asyncio.run(reconcile_bench(args.manifests, args.max_in_flight, args.max_per_service))
    memory_bench(args.memory_manifests, args.full_trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
