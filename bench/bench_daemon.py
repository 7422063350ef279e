"""The daemon end to end against the emulator (a process of its own, counting requests).

Each scenario runs the real :class:`~reconciler.runtime.daemon.Daemon` with the settings
``reconciler run`` builds from its flags (``benchlib.default_settings``), in this process,
and prints one JSON object (the last line) for ``run_all.py``:

- ``converge``: N commands of D each, default flags (16 in flight, 4 per service, the
  adaptive rate limit): wall time against the ideal ``N * D / 16``, API calls per operation
  (server-side counts). ``--variant before``: the defaults before the performance work (a
  fixed 10 requests/s, a first poll at 1 s), for a before/after within one run.
  ``--epoch steady`` (default): the store's epoch is older than its settle window (a
  running daemon: new intents need no probe); ``fresh``: a new store (adoption pass, probes).
- ``cold``: a fresh store converging N commands of D, 64 in flight (16 per service), no
  rate limit.
- ``newfile``: a running daemon; a new manifest file is written, the time until its run POST
  leaves (p50/p99 over samples): file-system events (``SourceWatcher.watch``).
  ``--variant before``: a stat pass every 2 s, as the follower did before.
- ``webhook``: a running daemon with M manifests in sync; a new file, then a signed webhook
  at once: the time from the webhook to the run POST (the follower is silenced).
- ``long``: K commands of D (150 s) with a learnt typical duration: the lag from each
  operation's end (the emulator's ``finishedAt``) to the record, and GETs per operation.

    python bench/bench_daemon.py converge [--manifests 200] [--duration 200ms]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from benchlib import (
    COMMANDS,
    ROUTE_OPERATION,
    ROUTE_RUN,
    ROUTE_SERVICES,
    SERVICE_IDS,
    SERVICE_NAMES,
    EmulatorProcess,
    backdated_epoch,
    commands,
    default_settings,
    emulator_services,
    manifest_docs,
    percentile,
    seed_history,
    seed_in_sync,
    utcnow,
    write_manifests,
)

from reconciler.model.durations import parse_duration
from reconciler.model.identity import operation_id
from reconciler.runtime.daemon import Daemon
from reconciler.runtime.listener import sign
from reconciler.source import kinds
from reconciler.source.loader import parse_documents
from reconciler.store.sqlite import Store

SECRET = "bench-webhook-secret"


class Spy(httpx.AsyncBaseTransport):
    """The daemon's HTTP transport, noting when each run POST leaves (by operation id)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.posts: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            op = request.headers.get("operation-id", "")
            now = time.monotonic()
            self.posts.setdefault(op, now)
            waiter = self.waiters.pop(op, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)
        return await self.inner.handle_async_request(request)

    def expect(self, op: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if op in self.posts:
            future.set_result(self.posts[op])
        else:
            self.waiters[op] = future
        return future

    async def aclose(self) -> None:
        await self.inner.aclose()


def quiet() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def before(settings: Any) -> Any:
    """The defaults before the performance work, for a before/after within one run: a
    fixed 10 requests/s and a first poll at 1 s."""
    return replace(settings,
                   client=replace(settings.client, adaptive_rate=False, rate_limit=10.0),
                   engine=replace(settings.engine, poll_initial=1.0))


def stat_follow() -> None:
    """The directory follower before the performance work: a stat pass every 2 s."""

    async def follow(self: kinds.DirectorySource, on_change: Callable[[str], None]) -> None:
        while True:
            await asyncio.sleep(self.watch_period)
            if self.watcher.content and self.watcher.changed():
                on_change("manifests changed")

    kinds.DirectorySource.follow = follow  # type: ignore[method-assign]


def silent_follow() -> None:
    async def follow(self: kinds.DirectorySource, on_change: Callable[[str], None]) -> None:
        await asyncio.Event().wait()

    kinds.DirectorySource.follow = follow  # type: ignore[method-assign]


def one_manifest(name: str, command: str, service: int = 0) -> str:
    return ("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\nspec:\n  service: {SERVICE_IDS[service]}\n"
            f"  command: {command}\n  payload: {{n: 1}}\n")


def op_of(text: str) -> str:
    """The operation id of the first attempt of the one manifest in ``text``."""
    (command,) = parse_documents([("x.yaml", text)]).commands
    return operation_id(command.spec_hash(""), 0)


def calls(emu: EmulatorProcess) -> dict[str, int]:
    routes: dict[str, int] = emu.requests()["routes"]
    return {"post": routes.get(ROUTE_RUN, 0), "get": routes.get(ROUTE_OPERATION, 0),
            "services": routes.get(ROUTE_SERVICES, 0),
            "total": sum(routes.values())}


# ------------------------------------------------------------------ scenarios


async def converge(args: argparse.Namespace) -> dict[str, Any]:
    duration = parse_duration(args.duration).total_seconds()
    with tempfile.TemporaryDirectory() as tmp, \
            EmulatorProcess(emulator_services(default=args.duration), dedup=False) as emu:
        root = Path(tmp)
        folder = write_manifests(root, manifest_docs(args.manifests, policies=False,
                                                     chains=False))
        state = root / "state.db"
        if args.epoch == "steady":
            with Store(state) as store:
                backdated_epoch(store)
                if args.learnt:  # durations known from earlier runs (the store's history)
                    for service in (*SERVICE_IDS, *SERVICE_NAMES):
                        for command in COMMANDS:
                            seed_history(store, service, command, duration)
        extra = ["--max-in-flight", str(args.max_in_flight),
                 "--max-per-service", str(args.max_per_service), "--once"]
        if args.rate_limit is not None:
            extra += ["--rate-limit", args.rate_limit]
        settings = default_settings(folder, emu.url, state, *extra)
        if args.variant == "before":
            settings = before(settings)
        started_cpu = time.process_time()
        started = time.perf_counter()
        code = await Daemon(settings).run()
        wall = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        counted = calls(emu)
        executions = emu.executions()
    ops = len(executions)
    assert code == 0 and ops == args.manifests, (code, ops)
    assert len({e["operationId"] for e in executions}) == ops  # each exactly once
    ideal = args.manifests * duration / args.max_in_flight
    return {"scenario": "converge", "variant": args.variant, "epoch": args.epoch,
            "learnt": args.learnt,
            "manifests": args.manifests, "duration": duration, "wall": wall, "cpu": cpu,
            "ideal": ideal, "wall_over_ideal": wall / ideal if ideal else None,
            "calls": counted, "calls_per_op": counted["total"] / ops,
            "rate_limit": settings.client.rate_limit,
            "adaptive": getattr(settings.client, "adaptive_rate", False),
            "in_flight": args.max_in_flight, "per_service": args.max_per_service}


async def running(settings: Any, spy: Spy, body: Callable[[Daemon], Any]) -> Any:
    """Run the daemon (not once) while ``body`` measures; stop it after."""
    daemon = Daemon(settings, transport=spy)
    task = asyncio.ensure_future(daemon.run())
    try:
        while daemon.plan is None:  # the first pass is done
            await asyncio.sleep(0.02)
            if task.done():
                task.result()
        return await body(daemon)
    finally:
        daemon.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await spy.aclose()


async def newfile(args: argparse.Namespace) -> dict[str, Any]:
    if args.variant == "before":
        stat_follow()
    with tempfile.TemporaryDirectory() as tmp, \
            EmulatorProcess(emulator_services()) as emu:
        root = Path(tmp)
        folder = write_manifests(root, manifest_docs(10, policies=False, chains=False))
        state = root / "state.db"
        with Store(state) as store:
            backdated_epoch(store)
        settings = default_settings(folder, emu.url, state)
        spy = Spy()

        async def measure(_: Daemon) -> list[float]:
            latencies = []
            rng = random.Random(5)
            await asyncio.sleep(1.0)  # the follower is started (its first watch is set up)
            for i in range(args.samples):
                await asyncio.sleep(rng.uniform(0.05, 0.5))  # not in step with any poll
                # spread over the services: the per-service limit is not what is measured
                text = one_manifest(f"new-{i:03d}", COMMANDS[i % len(COMMANDS)], i % 4)
                waiting = spy.expect(op_of(text))
                started = time.monotonic()
                (folder / f"new-{i:03d}.yaml").write_text(text)
                latencies.append(await asyncio.wait_for(waiting, 30) - started)
            return latencies

        latencies = await running(settings, spy, measure)
    return {"scenario": "newfile", "variant": args.variant, "samples": len(latencies),
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "max": max(latencies), "latencies": [round(x, 3) for x in latencies]}


async def webhook(args: argparse.Namespace) -> dict[str, Any]:
    silent_follow()
    with tempfile.TemporaryDirectory() as tmp, \
            EmulatorProcess(emulator_services()) as emu:
        root = Path(tmp)
        docs = manifest_docs(args.manifests, policies=False, chains=False)
        folder = write_manifests(root, docs)
        state = root / "state.db"
        with Store(state) as store:
            backdated_epoch(store)
            seed_in_sync(store, commands(docs), now=utcnow())
        settings = replace(default_settings(folder, emu.url, state), webhook_secret=SECRET,
                           listen="127.0.0.1:0")
        spy = Spy()

        async def measure(daemon: Daemon) -> list[float]:
            latencies = []
            async with httpx.AsyncClient(base_url=daemon.url or "", timeout=30) as hook:
                for i in range(args.samples):
                    await asyncio.sleep(0.3)
                    text = one_manifest(f"hook-{i:03d}", COMMANDS[i % len(COMMANDS)], i % 4)
                    waiting = spy.expect(op_of(text))
                    (folder / f"hook-{i:03d}.yaml").write_text(text)
                    body = json.dumps({"ref": "refs/heads/main", "n": i}).encode()
                    started = time.monotonic()
                    answer = await hook.post("/hooks/reconcile", content=body, headers={
                        "X-Hub-Signature-256": sign(body, SECRET),
                        "X-GitHub-Delivery": f"d-{i}", "Content-Type": "application/json"})
                    assert answer.status_code == 202, answer.text
                    latencies.append(await asyncio.wait_for(waiting, 60) - started)
            return latencies

        latencies = await running(settings, spy, measure)
    return {"scenario": "webhook", "manifests": args.manifests, "samples": len(latencies),
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "max": max(latencies), "latencies": [round(x, 3) for x in latencies]}


async def long(args: argparse.Namespace) -> dict[str, Any]:
    duration = parse_duration(args.duration).total_seconds()
    with tempfile.TemporaryDirectory() as tmp, \
            EmulatorProcess(emulator_services(default=args.duration)) as emu:
        root = Path(tmp)
        folder = root / "manifests"
        folder.mkdir()
        for i in range(args.manifests):
            (folder / f"long-{i}.yaml").write_text(one_manifest(f"long-{i}", "reindex",
                                                                service=0))
        state = root / "state.db"
        with Store(state) as store:
            backdated_epoch(store)
            if args.history:
                seed_history(store, SERVICE_IDS[0], "reindex", duration)
        settings = default_settings(folder, emu.url, state, "--once")
        if args.variant == "before":
            settings = before(settings)
        await Daemon(settings).run()
        counted = calls(emu)
        executions = {e["operationId"]: e for e in emu.executions()}
        with Store(state) as store:
            recorded = {r.operation_id: r for r in store.intents().values()
                        if r.name.startswith("long-")}
    lags = []
    for op, rec in recorded.items():
        finished = datetime.fromisoformat(executions[op]["finishedAt"].replace("Z", "+00:00"))
        assert rec.succeeded_at is not None
        lags.append((rec.succeeded_at - finished).total_seconds())
    return {"scenario": "long", "variant": args.variant, "history": args.history,
            "duration": duration, "ops": len(lags), "lag_p50": percentile(lags, 0.5),
            "lag_max": max(lags), "gets_per_op": counted["get"] / len(lags),
            "calls_per_op": counted["total"] / len(lags)}


SCENARIOS = {"converge": converge, "cold": converge, "newfile": newfile, "webhook": webhook,
             "long": long}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--variant", choices=("default", "before"), default="default",
                        help="before: the defaults before the performance work")
    parser.add_argument("--epoch", choices=("steady", "fresh"), default="steady")
    parser.add_argument("--manifests", type=int, default=200)
    parser.add_argument("--duration", default="200ms")
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--max-per-service", type=int, default=4)
    parser.add_argument("--rate-limit", default=None, help="as the CLI flag (default: its own)")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--history", type=int, default=1)
    parser.add_argument("--learnt", action="store_true",
                        help="converge: the store holds earlier runs of every command")
    args = parser.parse_args()
    if args.scenario == "cold":
        args.epoch = "fresh"
    quiet()
    os.environ.pop("RECONCILER_LEASE_NAME", None)
    result = asyncio.run(SCENARIOS[args.scenario](args))
    result["scenario"] = args.scenario
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
