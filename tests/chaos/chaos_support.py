"""Helpers of the chaos tests: a generated scenario, the emulator as a process, the daemon.

The scenario is a few dozen ``ServiceCommand`` manifests over three emulated services,
with dependency chains, ``service:`` ids and ``serviceName:`` references, an always
failing command (``fail: true``), commands failing their first execution
(``failTimes: 1``) and one manifest blocked behind a failing dependency. For every
manifest it knows how many executions the emulator must show once everything settled.

``tests/chaos/test_chaos.py`` (kill -9 under classic faults) and
``tests/chaos/test_chaos_matrix.py`` (kill -9, two daemons on one store, under each
adversary mode) use it; pytest puts this folder on ``sys.path`` (rootdir-relative
"prepend" imports, no ``__init__.py``), so the tests import it as ``chaos_support``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from reconciler.cli.render import status_json
from reconciler.observe.status import status_rows
from reconciler.planning.planner import desired_intent, plan
from reconciler.source.loader import load_manifests
from reconciler.store.sqlite import Store

SERVICES: tuple[tuple[str, str, dict[str, dict[str, Any]]], ...] = (
    ("6f1c2a4e-0000-4000-8000-00000000c001", "vectors", {
        "reindex": {"duration": "300ms"},
        "embed": {"duration": "1s"},
        "compact": {"duration": "100ms"},
        "broken": {"duration": "200ms", "fail": True},
    }),
    ("6f1c2a4e-0000-4000-8000-00000000c002", "warehouse", {
        "provision": {"duration": "500ms"},
        "migrate": {"duration": "200ms"},
        "analyze": {"duration": "100ms"},
    }),
    ("6f1c2a4e-0000-4000-8000-00000000c003", "tickets", {
        "refresh": {"duration": "700ms"},
        "export": {"duration": "0s"},
    }),
)
SUCCEEDING = [(sid, name, cmd) for sid, name, cmds in SERVICES for cmd, spec in cmds.items()
              if not spec.get("fail")]
RETRY = {"limit": 2, "backoff": "200ms", "maxBackoff": "1s"}


def log_events(log: Path) -> Iterator[dict[str, Any]]:
    """The JSON log lines of a daemon's log file (a line cut short by SIGKILL skipped)."""
    for line in log.read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


@dataclass(frozen=True)
class Expectation:
    """What one manifest must have caused on the server once settled."""

    name: str
    executions: int
    states: tuple[str, ...]
    kind: str


@dataclass
class Scenario:
    emulator_config: dict[str, Any]
    manifests: list[dict[str, Any]]
    expected: dict[str, Expectation] = field(default_factory=dict)

    def write(self, root: Path, generation: int = 0) -> tuple[Path, Path]:
        """Write the emulator config and the manifests (three documents a file, ``---``).

        ``generation`` > 0 rewrites every manifest with ``rerun: "<generation>"``: a new
        intent for each, so a further round of work (written only while no daemon runs).
        """
        config = root / "emulator.yaml"
        if generation == 0:
            config.write_text(yaml.safe_dump(self.emulator_config, sort_keys=False))
        folder = root / "manifests"
        folder.mkdir(exist_ok=True)
        docs = [dict(m, spec={**m["spec"], "rerun": str(generation)}) if generation else m
                for m in self.manifests]
        for start in range(0, len(docs), 3):
            (folder / f"batch-{start // 3:03d}.yaml").write_text(
                yaml.safe_dump_all(docs[start:start + 3], sort_keys=False))
        return config, folder

    def executions(self, name: str, generation: int) -> int:
        """Executions the intent of ``name`` in ``generation`` must have caused."""
        exp = self.expected[name]
        if exp.kind == "flaky" and generation > 0:
            return 1  # failTimes counts per service and command: spent in generation 0
        return exp.executions


def build_scenario(count: int, *, seed: int, faults: Mapping[str, Any],
                   retry: Mapping[str, Any] = RETRY) -> Scenario:
    """``count`` manifests (at least 8): mostly succeeding commands, 2+ always failing,
    2+ failing once, one blocked behind a failing dependency; every fifth one depends on
    its predecessor (chains of succeeding manifests). ``retry``: every manifest's
    ``spec.retry`` (an always failing command executes ``retry.limit + 1`` times)."""
    assert count >= 8
    rng = random.Random(seed)
    services = [{"id": sid, "name": name, "status": {"ready": True},
                 "commands": dict(cmds)} for sid, name, cmds in SERVICES]
    failing = max(2, count // 15)
    flaky = max(2, count // 15)
    manifests: list[dict[str, Any]] = []
    expected: dict[str, Expectation] = {}

    def doc(name: str, sid: str, sname: str, command: str, index: int,
            depends: Sequence[str] = ()) -> dict[str, Any]:
        spec: dict[str, Any] = (
            {"service": sid} if index % 2 == 0 else {"serviceName": sname})
        spec["command"] = command
        spec["payload"] = {"index": index, "tables": [f"t{index}", f"t{index + 1}"]}
        if index % 3 == 0:
            spec["context"] = {"requestedBy": "chaos", "ticket": f"CH-{index}"}
        spec["retry"] = dict(retry)
        if depends:
            spec["dependsOn"] = list(depends)
        return {"apiVersion": "ailake.reconciler/v1", "kind": "ServiceCommand",
                "metadata": {"name": name, "labels": {"suite": "chaos"}}, "spec": spec}

    previous_ok: str | None = None
    for i in range(count):
        if i < failing:
            name = f"broken-{i:03d}"
            manifests.append(doc(name, SERVICES[0][0], SERVICES[0][1], "broken", i))
            expected[name] = Expectation(name, retry["limit"] + 1, ("stalled",), "fail")
        elif i < failing + flaky:
            name = f"flaky-{i:03d}"
            command = f"flaky{i}"  # failTimes counts per service and command
            services[2]["commands"][command] = {"duration": "300ms", "failTimes": 1}
            manifests.append(doc(name, SERVICES[2][0], SERVICES[2][1], command, i))
            expected[name] = Expectation(name, 2, ("in_sync",), "flaky")
        elif i == failing + flaky:
            name = f"blocked-{i:03d}"
            dep = "broken-000"
            manifests.append(doc(name, SERVICES[1][0], SERVICES[1][1], "analyze", i, [dep]))
            expected[name] = Expectation(name, 0, ("stalled",), "blocked")
        else:
            sid, sname, command = rng.choice(SUCCEEDING)
            name = f"cmd-{i:03d}-{command}"
            depends = [previous_ok] if previous_ok and i % 5 != 0 else []
            # chains: i%5 == 0 starts a new chain, the next four each wait for the one before
            manifests.append(doc(name, sid, sname, command, i, depends))
            expected[name] = Expectation(name, 1, ("in_sync",), "ok")
            previous_ok = name
    config = {"dedup": False, "seed": seed, "services": services, "faults": dict(faults)}
    return Scenario(config, manifests, expected)


def operation_ids(manifest_dir: Path, attempts: int = 8) -> dict[str, str]:
    """Operation id -> manifest name, for the first ``attempts`` attempts of each
    manifest as the files in ``manifest_dir`` now say."""
    load = load_manifests(manifest_dir)
    assert not load.problems, [str(p) for p in load.problems]
    now = datetime.now(UTC)
    ids: dict[str, str] = {}
    for command in load.commands:
        want = desired_intent(command, now)
        for attempt in range(attempts):
            ids[want.operation_id(attempt)] = command.name
    return ids


def attempt_ids(manifest_dir: Path, attempts: int = 8) -> dict[str, tuple[str, int]]:
    """Operation id -> (manifest name, attempt), for the first ``attempts`` attempts of
    each manifest as the files in ``manifest_dir`` now say."""
    load = load_manifests(manifest_dir)
    assert not load.problems, [str(p) for p in load.problems]
    now = datetime.now(UTC)
    ids: dict[str, tuple[str, int]] = {}
    for command in load.commands:
        want = desired_intent(command, now)
        for attempt in range(attempts):
            ids[want.operation_id(attempt)] = (command.name, attempt)
    return ids


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class EmulatorProcess:
    """``python -m reconciler emulator`` on a free port; survives every daemon kill."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "emulator", "--config", str(config),
             "--listen", "127.0.0.1:0"],
            stdout=self._out, stderr=subprocess.STDOUT, env=clean_env())
        self.url = self._wait_url(timeout=15.0)
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    def _wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        marker = "AI Lake emulator listening on "
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if marker in line:
                    return line.split(marker, 1)[1].strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited: {self.log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"emulator did not start: {self.log.read_text()}")

    def executions(self) -> list[dict[str, Any]]:
        response = self.http.get("/_emulator/executions")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def operations(self) -> list[dict[str, Any]]:
        response = self.http.get("/_emulator/operations")
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def set_faults(self, **faults: Any) -> None:
        self.http.put("/_emulator/faults", json=faults).raise_for_status()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@dataclass
class DaemonRun:
    index: int
    log: Path
    returncode: int | None
    killed: bool
    elapsed: float

    def crashed(self) -> bool:
        """The run ended in an uncaught exception (a traceback), not by a kill or exit."""
        return "Traceback (most recent call last)" in self.log.read_text(errors="replace")

    def events(self) -> Iterator[dict[str, Any]]:
        return log_events(self.log)

    def phase(self) -> str:
        """Where the kill landed, from the last event the run logged."""
        last = "startup"
        for event in self.events():
            name = event.get("event", "?")
            if name == "transition":
                last = f"after {event.get('state')}"
            elif name in ("manifests_loaded",):
                last = "planning/probing"
            elif name in ("adopted",):
                last = "probing"
            elif name in ("run_outcome_unknown", "run_deferred"):
                last = "resolving"
            elif name == "converged":
                last = "converged"
        return last


class Daemon:
    """Runs ``reconciler run --once`` as a subprocess, one log file per run."""

    def __init__(self, manifests: Path, url: str, state: Path, logs: Path,
                 extra: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "reconciler", "run", "--manifests", str(manifests),
                     "--api-url", url, "--state", str(state), "--listen", "", "--interval",
                     "1s", "--once", "--log-format", "json",
                     # requests answer within milliseconds here (no gateway holds them):
                     # a 3 s settle window is how long a lookup waits before trusting a
                     # 404 for an unanswered POST
                     "--request-timeout", "2s", "--settle-window", "3s", *extra]
        self.env = {**clean_env(), **(env or {})}
        self.logs = logs
        self.logs.mkdir(exist_ok=True)
        self.runs: list[DaemonRun] = []
        self._started = 0  # processes started (their log files are numbered)

    def _start(self, label: str) -> tuple[subprocess.Popen[bytes], Path, Any]:
        log = self.logs / f"run-{self._started:04d}-{label}.log"
        self._started += 1
        out = log.open("wb")
        proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                env=self.env)
        return proc, log, out

    def run_and_kill(self, delay: float) -> DaemonRun:
        """Start, SIGKILL after ``delay`` seconds (unless it exited before)."""
        started = time.monotonic()
        proc, log, out = self._start("kill")
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
        finally:
            out.close()
        run = DaemonRun(len(self.runs), log, None if killed else proc.returncode, killed,
                        time.monotonic() - started)
        self.runs.append(run)
        return run

    def run_to_end(self, timeout: float, label: str = "final") -> DaemonRun:
        started = time.monotonic()
        proc, log, out = self._start(label)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            out.close()
            raise AssertionError(
                f"daemon did not settle within {timeout} s; log {log}:\n"
                + "\n".join(log.read_text().splitlines()[-40:])) from None
        out.close()
        run = DaemonRun(len(self.runs), log, code, False, time.monotonic() - started)
        self.runs.append(run)
        return run


    def run_together(self, delays: Sequence[float | None], timeout: float,
                     label: str = "kill") -> list[DaemonRun]:
        """Start one daemon per entry of ``delays``, all at once, on the same store; SIGKILL
        each after its delay (None: let it run to its end). Fails after ``timeout``."""
        started = time.monotonic()
        procs = [self._start(label if delay is not None else "final") for delay in delays]
        killed = [False] * len(procs)
        ended: list[float | None] = [None] * len(procs)
        try:
            while any(p.poll() is None for p, _, _ in procs):
                elapsed = time.monotonic() - started
                for i, ((proc, _, _), delay) in enumerate(zip(procs, delays, strict=True)):
                    if proc.poll() is not None:
                        ended[i] = ended[i] or elapsed
                    elif delay is not None and elapsed >= delay:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        killed[i], ended[i] = True, elapsed
                if elapsed > timeout:
                    logs = [str(log) for _, log, _ in procs]
                    raise AssertionError(f"daemons did not settle within {timeout} s: {logs}")
                time.sleep(0.005)
        finally:
            for proc, _, out in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                out.close()
        runs = []
        for i, (proc, log, _) in enumerate(procs):
            run = DaemonRun(len(self.runs), log, None if killed[i] else proc.returncode,
                            killed[i], ended[i] or time.monotonic() - started)
            self.runs.append(run)
            runs.append(run)
        return runs


def status(manifests: Path, state: Path) -> dict[str, dict[str, Any]]:
    """``reconciler status --output json`` by manifest name."""
    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "status", "--state", str(state), "--manifests",
         str(manifests), "--output", "json"],
        capture_output=True, text=True, check=True, env=clean_env(), timeout=60)
    return {row["name"]: row for row in json.loads(out.stdout)}


def status_in_process(manifests: Path, state: Path) -> dict[str, dict[str, Any]]:
    """What :func:`status` answers, computed in this process as ``reconciler status
    --manifests`` does (the same row builder), without a subprocess: by manifest name."""
    load = load_manifests(manifests)
    with Store(state, readonly=True) as store:
        views = plan(load.commands, store.intents(), datetime.now(UTC),
                     windows=store.latest_windows()).views
        rows = status_json(status_rows(store.latest_by_name(), views))
    return {row["name"]: row for row in rows}


def count_by_manifest(
    executions: Sequence[Mapping[str, Any]], ids: Mapping[str, tuple[str, int]],
) -> tuple[Counter[tuple[str, int]], Counter[str], list[str]]:
    """Executions per (manifest, generation), per operation id, and operation ids no
    manifest owns."""
    per_name: Counter[tuple[str, int]] = Counter()
    per_id: Counter[str] = Counter()
    strangers: list[str] = []
    for execution in executions:
        op_id = execution["operationId"]
        per_id[op_id] += 1
        name = ids.get(op_id)
        if name is None:
            strangers.append(op_id)
        else:
            per_name[name] += 1
    return per_name, per_id, strangers


# ---------------------------------------------------------------------------- replicas
# Long-running daemons (``reconciler run`` without ``--once``): they elect a leader (with a
# PostgreSQL store, by its advisory lock), so a kill of the leader is a failover. Used by
# ``tests/chaos/test_chaos_postgres.py`` and ``tests/chaos/test_postgres_restart.py``.


def replica_argv(manifests: Path, url: str, extra: Sequence[str] = ()) -> list[str]:
    """``reconciler run`` without ``--once`` and without ``--state`` (the store comes from
    ``RECONCILER_STATE``, as the Helm chart passes it)."""
    return [sys.executable, "-m", "reconciler", "run", "--manifests", str(manifests),
            "--api-url", url, "--listen", "", "--interval", "1s", "--log-format", "json",
            "--request-timeout", "2s", "--settle-window", "3s", *extra]


class Replica:
    """One long-running daemon process; its log is a file of JSON events."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str],
                 log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(list(argv), stdout=self._out, stderr=subprocess.STDOUT,
                                     env={**clean_env(), **env})
        self.killed_at: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def events(self) -> Iterator[dict[str, Any]]:
        return log_events(self.log)

    def leading(self) -> bool:
        """Alive, and its last leadership event is ``leader_acquired``."""
        if not self.alive():
            return False
        last = None
        for event in self.events():
            if event.get("event") in ("leader_acquired", "leader_lost"):
                last = event["event"]
        return last == "leader_acquired"

    def acquired_at(self) -> float | None:
        """Wall-clock time of its last ``leader_acquired`` event (None: never led)."""
        found = None
        for event in self.events():
            if event.get("event") == "leader_acquired":
                found = log_time(event)
        return found

    def crashed(self) -> bool:
        """An uncaught exception (a traceback) is in its log."""
        return "Traceback (most recent call last)" in self.log.read_text(errors="replace")

    def kill(self) -> float:
        """SIGKILL; the wall-clock time (``time.time()``) at which it was dead (reaped)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.killed_at = time.time()
        self._out.close()
        return self.killed_at

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.02) -> float:
    """Seconds until ``predicate()`` was true; AssertionError naming ``what`` after
    ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


#: the requests that only a leader sends: a run POST, and an operation's GET (a poll)
FOLLOWING = ("POST /api/v1/ailake/services/", "GET /api/v1/ailake/operations/")


class RequestLog:
    """Every AI Lake API request an in-process emulator counts, with the wall-clock time
    (``time.time()``, comparable with the daemons' log timestamps, :func:`log_time`) it
    arrived: ``(time, "METHOD template")``. Installed on a
    :class:`~reconciler.ailake.emulator.RunningEmulator`'s state."""

    def __init__(self, state: Any) -> None:
        self.entries: list[tuple[float, str]] = []
        counted = state.count_request

        def count_request(key: str) -> None:
            self.entries.append((time.time(), key))
            counted(key)

        state.count_request = count_request

    def first_after(self, moment: float, *, kinds: Sequence[str] = FOLLOWING,
                    ) -> tuple[float, str] | None:
        """The first request after ``moment`` whose key starts with one of ``kinds`` (by
        default: a run POST or an operation's GET)."""
        for at, key in list(self.entries):
            if at > moment and key.startswith(tuple(kinds)):
                return at, key
        return None


def log_time(event: Mapping[str, Any]) -> float:
    """A log event's ``timestamp`` (ISO 8601, UTC) as ``time.time()`` seconds."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def status_of(manifests: Path, location: str) -> dict[str, dict[str, Any]]:
    """:func:`status_in_process` on any store location (a SQLite path or a
    ``postgresql://`` URL): ``reconciler status --manifests`` rows by manifest name."""
    from reconciler.store import open_store

    load = load_manifests(manifests)
    with open_store(location, readonly=True) as store:
        views = plan(load.commands, store.intents(), datetime.now(UTC),
                     windows=store.latest_windows()).views
        rows = status_json(status_rows(store.latest_by_name(), views))
    return {row["name"]: row for row in rows}


def write_generation(scenario: Scenario, root: Path, generation: int) -> Path:
    """:meth:`Scenario.write` of ``generation`` while daemons read the folder: each file
    is written beside it first and moved into place (``os.replace``), so a load sees a
    file whole, old or new, never cut short (which would orphan its other manifests)."""
    staging = root / "staging"
    staging.mkdir(exist_ok=True)
    folder = root / "manifests"
    docs = [dict(m, spec={**m["spec"], "rerun": str(generation)}) for m in scenario.manifests]
    for start in range(0, len(docs), 3):
        name = f"batch-{start // 3:03d}.yaml"
        (staging / name).write_text(yaml.safe_dump_all(docs[start:start + 3], sort_keys=False))
        os.replace(staging / name, folder / name)
    return folder
