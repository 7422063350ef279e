"""Growth with the number of manifests: load, a pass, peak RSS, a scrape, a plan.

For each size (default 1 000, 10 000, 50 000), in a fresh process of its own:

1. a child process writes the manifests (``benchlib.manifest_docs``: 10 per file) and
   records them as in sync in a SQLite store whose epoch is adopted (a steady state);
2. the **floor**: reading every file and ``yaml.load_all(..., Loader=yaml.CSafeLoader)``;
   the **cold load** (``load_manifests`` with its cache cleared), both in CPU seconds,
   interleaved, the best of each; and the **warm load** (the same tree again: the previous
   result returned);
3. the **daemon pass**, with the daemon's own code (``Daemon._load`` then ``Daemon._pass``,
   as its loop runs them on every interval), against an emulator process: CPU seconds
   (``time.process_time``) and API calls counted by the emulator (``GET /_emulator/requests``);
4. one ``/metrics`` scrape (``Daemon.exposition``), CPU seconds;
5. ``plan()`` alone (the commands and records in memory, nothing kept from an earlier
   plan), and ``Engine.plan`` as a pass runs it: on an unchanged store (the last plan
   kept), and after one record changed (two transitions saved: the store's kept reads
   carry them, the plan memo keeps every other manifest's action);
6. the daemon's peak RSS (``ru_maxrss`` once its loads, passes and scrapes ran, before the
   ``plan()`` measurements, which hold several plans at once).

    python bench/bench_scale.py [--sizes 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    EmulatorProcess,
    backdated_epoch,
    best_of,
    commands,
    default_settings,
    emulator_services,
    manifest_docs,
    peak_rss_mib,
    seed_in_sync,
    table,
    utcnow,
    write_manifests,
)


def seed(folder: Path, state: Path, size: int) -> None:
    """Child: the manifest files of ``size`` manifests, and their store in sync (made here,
    so the generator's own memory is not the daemon's peak)."""
    from reconciler.store.sqlite import Store

    docs = manifest_docs(size)
    write_manifests(folder.parent, docs)
    with Store(state) as store:
        backdated_epoch(store)
        seed_in_sync(store, commands(docs), now=utcnow())


def _plan_after_a_change(engine: Any, load: Any) -> Any:
    """``Engine.plan`` after one record changed (retired, then asked for again: two
    transitions saved), what a pass plans once something happened."""
    from reconciler.model.lifecycle import Retired, Revived

    rec = next(iter(engine.store.intents().values()))
    retired = engine.record(rec, Retired("orphaned", "bench"))
    engine.record(retired, Revived())
    return engine.plan(load)


def floor(files: list[Path]) -> float:
    """CPU seconds of reading the files and ``yaml.load_all`` with libyaml."""
    started = time.process_time()
    loader_class = yaml.CSafeLoader
    for path in files:
        for _ in yaml.load_all(path.read_bytes().decode("utf-8"), Loader=loader_class):
            pass
    return time.process_time() - started


async def measure(size: int, passes: int) -> dict[str, Any]:
    import logging

    import structlog

    from reconciler.ailake.client import AiLakeClient
    from reconciler.execution.engine import Engine
    from reconciler.observe.metrics import Metrics
    from reconciler.planning.planner import plan
    from reconciler.runtime import serving
    from reconciler.runtime.daemon import Daemon, log_transition
    from reconciler.source import loader
    from reconciler.store.sqlite import Store

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    out: dict[str, Any] = {"size": size, "rss_start": peak_rss_mib()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "manifests"
        state = root / "state.db"
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--seed", str(size), "--folder", str(folder),
                        "--state", str(state)], check=True)
        out["seed_s"] = time.perf_counter() - started
        with EmulatorProcess(emulator_services()) as emu:
            settings = default_settings(folder, emu.url, state)
            daemon = Daemon(settings)
            daemon.store = Store(settings.state, retention=settings.retention)
            daemon.metrics = Metrics(daemon.store)
            async with AiLakeClient(settings.client,
                                    observer=daemon.metrics.observe_request) as client:
                daemon.client = client
                engine = Engine(client, daemon.store, settings=settings.engine,
                                clock=daemon.clock,
                                listeners=[log_transition, daemon.metrics.on_transition],
                                fence=daemon._fence)
                engine.start(daemon._holder())
                started = time.perf_counter()
                daemon._load(["start"])  # the first load of the process: cold
                await daemon._pass(engine, daemon.load)
                out["first_pass_s"] = time.perf_counter() - started
                emu.reset_requests()
                cpu = []
                for _ in range(passes):
                    started = time.process_time()
                    daemon._load(["interval"])
                    await daemon._pass(engine, daemon.load)
                    cpu.append(time.process_time() - started)
                out["pass_cpu_s"] = min(cpu)
                out["pass_cpu_median_s"] = sorted(cpu)[len(cpu) // 2]
                out["pass_api_calls"] = emu.requests()["total"]
                if os.environ.get("BENCH_PROFILE"):  # where a pass spends its CPU
                    import cProfile

                    with cProfile.Profile() as profile:
                        daemon._load(["interval"])
                        await daemon._pass(engine, daemon.load)
                        serving.exposition(daemon)
                    profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{size}")
                loads = []
                for _ in range(passes):
                    started = time.process_time()
                    daemon._load(["interval"])
                    loads.append(time.process_time() - started)
                out["pass_load_cpu_s"] = min(loads)
                scrapes = []
                for _ in range(3):
                    started = time.process_time()
                    body = serving.exposition(daemon)
                    scrapes.append(time.process_time() - started)
                out["scrape_cpu_s"] = min(scrapes)
                out["scrape_bytes"] = len(body)
                # the daemon's own peak: loads, passes and scrapes (not the measurements
                # of plan() below, which keep several plans alive at once)
                out["rss_daemon"] = peak_rss_mib()
                assert daemon.load is not None
                load = daemon.load
                out["engine_plan_s"], _ = best_of(lambda: engine.plan(load), min_runs=3,
                                                  min_time=0.5)
                out["engine_plan_changed_s"], _ = best_of(
                    lambda: _plan_after_a_change(engine, load), min_runs=3, min_time=0.5)
                records = daemon.store.intents()
                now = utcnow()
                out["store_intents_s"], _ = best_of(daemon.store.intents, min_runs=3,
                                                    min_time=0.3)
                out["plan_s"], _ = best_of(lambda: plan(load.commands, records, now),
                                           min_runs=3, min_time=0.5)
                views = engine.plan(load).views
                out["in_sync"] = sum(1 for v in views if v.state == "in_sync")
            daemon.store.close()
        gc.collect()
        files = sorted(folder.glob("*.yaml"))
        age = time.time() - files[-1].stat().st_mtime
        time.sleep(max(0.0, loader.RACY_SECONDS + 0.1 - age))
        floors, colds = [], []
        result = None
        for _ in range(2 if size >= 10_000 else 3):  # interleaved: the machine's noise is shared
            floors.append(floor(files))
            result = None
            loader.clear_cache()
            gc.collect()
            started = time.process_time()  # CPU: both sides are CPU-bound, one thread
            result = loader.load_manifests(folder)
            colds.append(time.process_time() - started)
        out["floor_s"], out["cold_load_s"] = min(floors), min(colds)
        out["load_over_floor"] = out["cold_load_s"] / out["floor_s"]
        assert result is not None
        assert len(result.commands) == size and not result.problems
        out["warm_load_s"], _ = best_of(lambda: loader.load_manifests(folder), min_runs=3,
                                        min_time=0.2)
        assert loader.load_manifests(folder) is loader.load_manifests(folder)
    out["rss_peak"] = out["rss_daemon"]
    out["rss_process_peak"] = peak_rss_mib()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default="", help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        seed(Path(args.folder), Path(args.state), args.seed)
        return 0
    if args.size:
        print(json.dumps(asyncio.run(measure(args.size, args.passes))))
        return 0
    rows = []
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--size", str(size), "--passes",
                               str(args.passes)], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"size {size} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        rows.append((f"{size:,}", f"{r['floor_s']:.2f}", f"{r['cold_load_s']:.2f}",
                     f"{r['load_over_floor']:.2f}", f"{r['warm_load_s'] * 1e3:.0f}",
                     f"{r['pass_cpu_s']:.3f}", r["pass_api_calls"],
                     f"{r['scrape_cpu_s']:.3f}", f"{r['plan_s'] * 1e3:.0f}",
                     f"{r['store_intents_s'] * 1e3:.0f}", f"{r['rss_peak']:.0f}"))
    print(table(("manifests", "floor s", "cold load s", "load/floor", "warm load ms",
                 "pass CPU s", "pass API calls", "scrape CPU s", "plan ms",
                 "store.intents ms", "peak RSS MiB"), rows))
    print(json.dumps({"scale": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
