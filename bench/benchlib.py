"""Shared pieces of the benchmarks: generated manifests, recorded states, small tables.

Not a benchmark itself. The scripts beside it import it as a plain module (they are run
as ``python bench/bench_*.py``, which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from reconciler.model.durations import parse_duration
from reconciler.model.manifest import (
    Interval,
    LoadResult,
    Once,
    Policy,
    RetryPolicy,
    Schedule,
    ServiceCommand,
    ServiceRef,
)
from reconciler.model.records import IntentRecord
from reconciler.model.states import IntentState
from reconciler.planning.planner import desired_intent
from reconciler.source.loader import parse_documents

SERVICE_IDS = [f"6f1c2a4e-0000-4000-8000-0000000b{i:04d}" for i in range(4)]
SERVICE_NAMES = ["vectors", "warehouse", "tickets", "search"]
COMMANDS = ["reindex", "embed", "compact", "migrate", "analyze", "refresh"]
PER_FILE = 10


def manifest_docs(count: int, *, seed: int = 1, policies: bool = True,
                  commands: Sequence[str] = COMMANDS, chains: bool = True,
                  prefix: str = "cmd") -> list[dict[str, Any]]:
    """``count`` realistic ServiceCommand documents: payloads, contexts, labels, some
    ``serviceName`` references, dependency chains of up to 5 (unless not ``chains``), and
    (with ``policies``) a few interval and cron policies."""
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = []
    for i in range(count):
        s = rng.randrange(len(SERVICE_IDS))
        spec: dict[str, Any] = (
            {"service": SERVICE_IDS[s]} if i % 3 else {"serviceName": SERVICE_NAMES[s]})
        spec["command"] = rng.choice(list(commands))
        spec["payload"] = {"tables": [f"table_{i}_{k}" for k in range(rng.randint(1, 5))],
                           "batchSize": rng.choice([100, 500, 1000]), "index": i}
        if i % 2:
            spec["context"] = {"requestedBy": f"team-{i % 7}", "ticket": f"DATA-{i}"}
        if chains and i % 5:
            spec["dependsOn"] = [f"{prefix}-{i - 1:05d}"]
        if policies and i % 50 == 7:
            spec["policy"] = {"interval": "24h"}
        elif policies and i % 50 == 19:
            spec["policy"] = {"schedule": "0 3 * * *", "timezone": "Europe/Prague"}
        spec["retry"] = {"limit": 3, "backoff": "30s", "maxBackoff": "10m"}
        spec["timeout"] = "30m"
        docs.append({"apiVersion": "ailake.reconciler/v1", "kind": "ServiceCommand",
                     "metadata": {"name": f"{prefix}-{i:05d}", "labels": {"team": f"t{i % 7}"}},
                     "spec": spec})
    return docs


def sources(docs: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(file name, YAML text) pairs, ``PER_FILE`` documents per file."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # same text, 5x faster
    return [(f"manifests/batch-{start // PER_FILE:05d}.yaml",
             yaml.dump_all(docs[start:start + PER_FILE], Dumper=dumper, sort_keys=False))
            for start in range(0, len(docs), PER_FILE)]


def write_manifests(root: Path, docs: Sequence[dict[str, Any]]) -> Path:
    folder = root / "manifests"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in sources(docs):
        (root / name).write_text(text)
    return folder


def load(docs: Sequence[dict[str, Any]]) -> LoadResult:
    result = parse_documents(sources(docs))
    assert not result.problems, [str(p) for p in result.problems[:3]]
    return result


def commands(docs: Sequence[dict[str, Any]]) -> tuple[ServiceCommand, ...]:
    """The ServiceCommands ``parse_documents`` makes of ``docs``, built directly (the
    loader's pure-Python YAML parsing costs ~2.4 ms a manifest: 25 s for 10 000, which
    would dwarf what the planner benchmark measures). :func:`check_commands` proves both
    agree."""
    out = []
    for doc in docs:
        spec = doc["spec"]
        raw = spec.get("policy")
        policy: Policy = Once()
        if isinstance(raw, dict) and "interval" in raw:
            policy = Interval(every=parse_duration(raw["interval"]))
        elif isinstance(raw, dict):
            policy = Schedule(cron=raw["schedule"], timezone=raw.get("timezone", "UTC"))
        retry = spec.get("retry", {})
        out.append(ServiceCommand(
            name=doc["metadata"]["name"],
            service=ServiceRef(id=spec.get("service"), name=spec.get("serviceName")),
            command=spec["command"],
            payload=MappingProxyType(spec["payload"]) if "payload" in spec else None,
            context=MappingProxyType(spec["context"]) if "context" in spec else None,
            policy=policy,
            rerun=str(spec.get("rerun", "")),
            timeout=parse_duration(spec.get("timeout", "1h")),
            retry=RetryPolicy(limit=retry.get("limit", 3),
                              backoff=parse_duration(retry.get("backoff", "30s")),
                              max_backoff=parse_duration(retry.get("maxBackoff", "10m"))),
            depends_on=tuple(spec.get("dependsOn", ())),
            labels=MappingProxyType(dict(doc["metadata"].get("labels", {}))),
        ))
    return tuple(out)


def check_commands(docs: Sequence[dict[str, Any]]) -> None:
    """Assert :func:`commands` builds what the real loader builds (file/line aside)."""
    loaded = load(docs).commands
    built = commands(docs)
    assert len(loaded) == len(built)
    for a, b in zip(loaded, built, strict=True):
        assert replace(a, file="", line=0) == b, (a, b)


STATES = (  # share of manifests per recorded state, as a steady-state repository has them
    ("in_sync", 0.60), ("pending", 0.10), ("submitting", 0.03), ("failed", 0.05),
    ("stalled", 0.02), (None, 0.20),  # None: never recorded yet
)


def recorded_states(desired: Sequence[ServiceCommand], now: datetime, *, seed: int = 2,
                    orphans: float = 0.02) -> dict[str, IntentRecord]:
    """A realistic store content for ``desired``: mostly in sync, some in flight, some
    failed (backoff pending) or stalled, some never recorded, plus orphaned records of
    manifests that were removed."""
    rng = random.Random(seed)
    names, weights = zip(*STATES, strict=True)
    records: dict[str, IntentRecord] = {}
    for command in desired:
        state = rng.choices(names, weights)[0]
        if state is None:
            continue
        want = desired_intent(command, now)
        records[want.spec_hash] = _record(want.spec_hash, command.name, command.service.label,
                                          command.command, want.window, want.canonical,
                                          state, now, rng)
    for i in range(int(len(desired) * orphans)):
        h = f"{i:064x}"
        records[h] = _record(h, f"removed-{i:05d}", SERVICE_NAMES[0], "reindex", "", "{}",
                             "in_sync", now, rng)
    return records


def _record(spec_hash: str, name: str, service: str, command: str, window: str,
            canonical: str, status: Any, now: datetime, rng: random.Random) -> IntentRecord:
    attempts = {"failed": 2, "stalled": 4}.get(status, 1)
    started = now - timedelta(seconds=rng.uniform(5, 600))
    rec = IntentRecord(
        spec_hash=spec_hash, name=name, service=service, command=command, window=window,
        canonical=canonical, status=IntentState(status), attempts=attempts, retry_base=0,
        operation_id=f"op-{spec_hash[:12]}", service_id=SERVICE_IDS[0],
        first_submitted_at=started, attempt_started_at=started,
        next_attempt_at=None, next_poll_at=None, poll_count=0, last_error=None,
        retired=None, revision="r1", created_at=started, updated_at=started,
        succeeded_at=None,
    )
    if status == "pending":
        rec = replace(rec, next_poll_at=now + timedelta(seconds=rng.uniform(-2, 20)),
                      poll_count=rng.randint(0, 5))
    elif status == "submitting":
        rec = replace(rec, next_poll_at=now - timedelta(seconds=1))
    elif status == "failed":
        rec = replace(rec, next_attempt_at=now + timedelta(seconds=rng.uniform(-10, 60)),
                      last_error={"title": "Failed", "detail": "boom"})
    elif status == "stalled":
        rec = replace(rec, last_error={"title": "Failed", "detail": "boom"})
    elif status == "in_sync":
        rec = replace(rec, succeeded_at=started + timedelta(seconds=3))
    return rec


def utcnow() -> datetime:
    return datetime.now(UTC)


def best_of(fn: Callable[[], Any], *, min_runs: int = 3, min_time: float = 1.0,
            max_runs: int = 50) -> tuple[float, int]:
    """The fastest of at least ``min_runs`` runs (and at least ``min_time`` seconds of
    running, at most ``max_runs``): (seconds, runs)."""
    times: list[float] = []
    spent = 0.0
    while len(times) < min_runs or (spent < min_time and len(times) < max_runs):
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
        times.append(elapsed)
        spent += elapsed
    return min(times), len(times)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if k else c.ljust(w)
                       for k, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------ emulator, daemon, store
# (used by bench_scale.py, bench_daemon.py, bench_sdk.py and run_all.py)


def emulator_services(durations: dict[str, str] | None = None,
                      default: str = "0s") -> list[dict[str, Any]]:
    """The four bench services, every command of :data:`COMMANDS` lasting ``default``
    (``durations`` overrides single commands)."""
    durations = durations or {}
    return [{"id": sid, "name": name,
             "commands": {c: {"duration": durations.get(c, default)} for c in COMMANDS}}
            for sid, name in zip(SERVICE_IDS, SERVICE_NAMES, strict=True)]


class EmulatorProcess:
    """The emulator in a process of its own (its CPU is not the daemon's), with the
    server-side request counts of ``GET /_emulator/requests``."""

    def __init__(self, services: list[dict[str, Any]], *, dedup: bool = True,
                 faults: dict[str, Any] | None = None) -> None:
        import subprocess
        import sys
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        config = Path(self._dir.name) / "emulator.yaml"
        data: dict[str, Any] = {"dedup": dedup, "services": services}
        if faults:
            data["faults"] = faults
        config.write_text(yaml.safe_dump(data))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.ailake.emulator", "--config", str(config),
             "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "listening on " not in line:
            raise RuntimeError(f"emulator did not start: {line}")
        self.url = line.split("listening on ", 1)[1].strip()

    def get(self, path: str) -> Any:
        import httpx

        return httpx.get(self.url + path, timeout=30).json()

    def requests(self) -> dict[str, Any]:
        """``{"total": N, "routes": {"METHOD template": n}}``."""
        data: dict[str, Any] = self.get("/_emulator/requests")
        return data

    def reset_requests(self) -> None:
        import httpx

        httpx.delete(self.url + "/_emulator/requests", timeout=30)

    def executions(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.get("/_emulator/executions")
        return data

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
        self._dir.cleanup()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ROUTE_RUN = "POST /api/v1/ailake/services/{serviceId}/commands/{commandName}/run"
ROUTE_OPERATION = "GET /api/v1/ailake/operations/{operationId}"
ROUTE_SERVICES = "GET /api/v1/ailake/services"


def default_settings(manifests: Path, api_url: str, state: Path, *extra: str) -> Any:
    """The DaemonSettings ``reconciler run`` builds from its flags (the defaults, plus
    ``extra`` flags), so the benchmarks follow the CLI's defaults as they change."""
    from reconciler.cli.main import _settings, build_parser

    args = build_parser().parse_args(["run", "--manifests", str(manifests), "--api-url",
                                      api_url, "--state", str(state), "--listen", "", *extra])
    return _settings(args)


def backdated_epoch(store: Any, *, hours: float = 2.0) -> None:
    """A steady-state store: its epoch began (and was adopted) long ago, so new intents
    need no probe (README, exactly once, rule 4)."""
    then = utcnow() - timedelta(hours=hours)
    epoch = store.begin_epoch(reason="created", holder="bench", now=then)
    store.adopted(epoch, now=then)


def seed_in_sync(store: Any, desired: Sequence[ServiceCommand], *, now: datetime) -> None:
    """Record every command as succeeded (claimed, accepted, succeeded: what converging
    it through the API would have stored), without the API."""
    from reconciler.model.lifecycle import Accepted, Claimed, ObservedSucceeded, transition

    started = now - timedelta(minutes=5)
    db = getattr(store, "_db", None)
    if db is not None:  # a bench's set-up, not what it measures: no fsync per seeded step
        db.execute("PRAGMA synchronous=OFF")
    for command in desired:
        want = desired_intent(command, now)
        op = want.operation_id(0)
        rec = None
        for event, at in ((Claimed(want.new_intent(), 0, op, SERVICE_IDS[0], "r1"), started),
                          (Accepted(op, started + timedelta(seconds=1)), started),
                          (ObservedSucceeded(op, {"ok": True}), started + timedelta(seconds=3))):
            step = transition(rec, event, at)
            store.save(step)
            rec = step.record


def seed_history(store: Any, service: str, command: str, seconds: float, *,
                 count: int = 5) -> None:
    """Past successes of ``service``/``command`` lasting ``seconds`` (what polls learn
    the typical duration from), under names no manifest uses."""
    from reconciler.model.lifecycle import Accepted, Claimed, ObservedSucceeded, transition
    from reconciler.model.records import NewIntent

    end = utcnow() - timedelta(hours=1)
    for i in range(count):
        h = hashlib.sha256(f"{service}/{command}/{i}".encode()).hexdigest()
        intent = NewIntent(h, f"history-{h[:8]}", service, command, "", "{}")
        op = f"history-op-{h[:16]}"
        start = end - timedelta(seconds=seconds)
        rec = None
        for event, at in ((Claimed(intent, 0, op, SERVICE_IDS[0], "r0"), start),
                          (Accepted(op, start), start),
                          (ObservedSucceeded(op, {"ok": True}), end)):
            step = transition(rec, event, at)
            store.save(step)
            rec = step.record


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
