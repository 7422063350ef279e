"""High availability on one PostgreSQL store: the leader killed with kill -9, again and again.

Two or three long-running daemons (``reconciler run``, no ``--once``) share one PostgreSQL
database (passed as ``RECONCILER_STATE``, as the Helm chart does) and elect their leader by
its advisory lock. They work through the chaos scenario of ``chaos_support`` against an
in-process emulator with ``dedup: false`` (every POST executes: a second POST of an
operation id would be a second execution) and classic faults on (503s, 429s, connections
dropped after the run was accepted, latency). Round after round, after a seeded random
delay, the replica that leads is SIGKILLed and a fresh one is started in its place (the
pod's restart); whenever every manifest settled, each one's ``rerun`` is bumped (a new
generation of intents, each file replaced whole), so kills land on work in flight.

What must hold once everything settled:

- **double runs: 0**: no (manifest, generation, attempt) and no operation id executed twice;
- every manifest of every generation executed exactly as the scenario expects (a
  succeeding command once, an always failing one ``retry.limit + 1`` times, a flaky one
  twice in generation 0, a blocked one never) and ended in its expected state;
- no replica crashed (a traceback), each stops with 0 on SIGTERM, and the database's
  password is in no log.

Failover time is measured for every kill: from the moment the leader was dead to the first
run POST or operation GET the emulator received from its successor (requests from after the
successor's ``leader_acquired``), and to that ``leader_acquired``. The figures are printed.

Default: 3 kills, 3 replicas, 12 manifests (about 15 s). The full run is
``pytest -m slow -s tests/chaos/test_chaos_postgres.py`` (``CHAOS_KILLS`` kills, default 20,
over ``CHAOS_MANIFESTS`` manifests, default 24; ``CHAOS_REPLICAS``, ``CHAOS_SEED``,
``CHAOS_MAX_DELAY``: the latest kill moment after the leader started working, default 2 s).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from chaos_support import (
    RETRY,
    Replica,
    RequestLog,
    attempt_ids,
    build_scenario,
    replica_argv,
    status_of,
    wait_for,
    write_generation,
)
from pg_support import PASSWORD, PgServer

from reconciler.ailake.emulator import EmulatorConfig, start_background
from reconciler.model.states import TERMINAL

FAULTS = {"errorRate": 0.05, "throttleRate": 0.05, "retryAfter": 0, "dropRate": 0.05,
          "latency": "5ms"}
#: no API rate limit; a short not-found tolerance (nothing here is hidden after a 202)
FLAGS = ("--rate-limit", "0", "--not-found-tolerance", "30s")

Key = tuple[str, int, int]  # (manifest, generation, attempt)


@dataclass
class Figures:
    replicas: int
    kills: int = 0
    generations: int = 1
    executions: int = 0
    double_runs: int = 0
    crashes: int = 0
    elapsed: float = 0.0
    #: seconds from a kill to its successor's first run POST or operation GET
    failover: list[float] = field(default_factory=list)
    #: seconds from a kill to its successor's leader_acquired
    election: list[float] = field(default_factory=list)
    idle: int = 0  # kills after which the successor had nothing to send within 15 s
    log: list[str] = field(default_factory=list)  # one line per kill

    def line(self) -> str:
        def stats(values: list[float]) -> str:
            if not values:
                return "n/a"
            return (f"median {statistics.median(values):.2f}s, max {max(values):.2f}s "
                    f"(n={len(values)})")

        return (f"chaos[postgres]: {self.replicas} replicas, {self.kills} leader kills, "
                f"{self.generations} generations, {self.executions} executions, "
                f"{self.double_runs} double runs, {self.crashes} crashes, "
                f"{self.elapsed:.1f}s\n"
                f"  failover kill -> first POST/poll of the new leader: "
                f"{stats(self.failover)}\n"
                f"  kill -> leader_acquired: {stats(self.election)}"
                + (f"; {self.idle} kills found no work left" if self.idle else ""))


def run_case(pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], *,
             kills: int, manifests: int, replicas: int, seed: int, max_delay: float,
             settle_timeout: float) -> Figures:
    started = time.monotonic()
    figures = Figures(replicas)
    rng = random.Random(seed)
    scenario = build_scenario(manifests, seed=seed, faults=FAULTS,
                              retry={**RETRY, "limit": 1})
    _, folder = scenario.write(tmp_path)
    generation = 0
    ids: dict[str, Key] = {op: (n, 0, a) for op, (n, a) in attempt_ids(folder).items()}
    database = pg_server.create_database()
    dsn = pg_server.url(database)
    logs = tmp_path / "logs"
    logs.mkdir()
    config = EmulatorConfig.from_dict({**scenario.emulator_config, "dedup": False},
                                      source="chaos-postgres.yaml")
    started_replicas = 0
    pool: list[Replica] = []
    everyone: list[Replica] = []

    def start_one() -> Replica:
        nonlocal started_replicas
        name = f"replica-{started_replicas:02d}"
        started_replicas += 1
        replica = Replica(name, replica_argv(folder, emu.url, FLAGS),
                          {"RECONCILER_STATE": dsn, "POD_NAME": name}, logs / f"{name}.log")
        pool.append(replica)
        everyone.append(replica)
        return replica

    def leader() -> Replica | None:
        leading = [r for r in pool if r.leading()]
        assert len(leading) <= 1, f"two replicas lead at once: {[r.name for r in leading]}"
        return leading[0] if leading else None

    def settled() -> bool:
        rows = status_of(folder, dsn)
        return all(rows.get(n, {}).get("state") in TERMINAL for n in scenario.expected)

    problems: list[str] = []
    try:
        with start_background(config, host="127.0.0.1", port=0) as emu:
            requests = RequestLog(emu.state)
            for _ in range(replicas):
                start_one()
            while figures.kills < kills:
                wait_for(lambda: leader() is not None, 30, "a leader")
                if settled():  # a new generation: kills must land on work in flight
                    generation += 1
                    written = time.time()
                    write_generation(scenario, tmp_path, generation)
                    ids.update((op, (n, generation, a))
                               for op, (n, a) in attempt_ids(folder).items())
                    wait_for(lambda at=written: requests.first_after(
                        at, kinds=("POST /api/v1/ailake/services/",)) is not None,
                        30, "the leader to send the new generation")
                time.sleep(rng.uniform(0.05, max_delay))
                victim = leader()
                if victim is None:
                    continue  # between two leaders already (cannot happen without a kill)
                killed_at = victim.kill()
                pool.remove(victim)
                figures.kills += 1
                start_one()  # the pod's restart
                wait_for(lambda: leader() is not None, 30, "a new leader after a kill")
                successor = leader()
                assert successor is not None
                acquired = successor.acquired_at()
                assert acquired is not None and acquired >= killed_at - 0.05
                figures.election.append(max(0.0, acquired - killed_at))
                try:
                    wait_for(lambda at=acquired: requests.first_after(at) is not None,
                             15, "the new leader's first request")
                except AssertionError:
                    figures.idle += 1
                    continue
                first = requests.first_after(acquired)
                assert first is not None
                figures.failover.append(first[0] - killed_at)
                figures.log.append(f"kill {figures.kills}: {victim.name} -> {successor.name} "
                                   f"leads after {acquired - killed_at:.2f}s, first "
                                   f"{first[1].split()[0]} after {first[0] - killed_at:.2f}s")
            figures.generations = generation + 1
            wait_for(settled, settle_timeout, "every manifest settled", step=0.5)
            for replica in pool:
                code = replica.stop()
                if code != 0:
                    problems.append(f"{replica.name} exited {code} on SIGTERM: {replica.log}")
            executions = emu.state.list_executions()
    except BaseException:
        with capsys.disabled():
            print(f"\n{figures.line()}\n  " + "\n  ".join(figures.log))
        raise
    finally:
        for replica in pool:
            if replica.alive():
                replica.kill()
        figures.elapsed = time.monotonic() - started

    per_key: Counter[Key] = Counter()
    per_id: Counter[str] = Counter()
    strangers = []
    for execution in executions:
        per_id[execution["operationId"]] += 1
        key = ids.get(execution["operationId"])
        if key is None:
            strangers.append(execution["operationId"])
        else:
            per_key[key] += 1
    figures.executions = len(executions)
    doubles: dict[str, Any] = {"{}@{}#{}".format(*k): n for k, n in per_key.items() if n > 1}
    doubles.update({op: n for op, n in per_id.items() if n > 1})
    figures.double_runs = len(doubles)
    if strangers:
        problems.append(f"executions of ids no manifest owns: {strangers[:5]}")
    if doubles:
        problems.append(f"double runs: {doubles}; logs in {logs}")
    per_generation = Counter({(n, g): 0 for n in scenario.expected
                              for g in range(generation + 1)})
    for (n, g, _attempt), c in per_key.items():
        per_generation[n, g] += c
    wrong = {f"{n}@{g}": (c, scenario.executions(n, g))
             for (n, g), c in per_generation.items() if c != scenario.executions(n, g)}
    if wrong:
        problems.append(f"executions per manifest@generation (got, want): {wrong}")
    rows = status_of(folder, dsn)
    states = {n: rows.get(n, {}).get("state") for n, exp in scenario.expected.items()
              if rows.get(n, {}).get("state") not in exp.states}
    if states:
        problems.append(f"manifests not settled as expected: {states}")
    crashed = [str(r.log) for r in everyone if r.crashed()]
    figures.crashes = len(crashed)
    if crashed:
        problems.append(f"replicas crashed: {crashed}")
    leaks = [str(r.log) for r in everyone if PASSWORD in r.log.read_text(errors="replace")]
    if leaks:
        problems.append(f"the database password is written in {leaks}")
    if figures.idle > kills // 2:
        problems.append(f"{figures.idle} of {kills} kills found nothing in flight")
    pg_server.drop_database(database)
    with capsys.disabled():
        print(f"\n{figures.line()}\n  " + "\n  ".join(figures.log))
    assert not problems, "\n".join(problems) + "\n" + figures.line()
    return figures


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@pytest.mark.timeout(120)
def test_killing_the_leader_never_runs_a_command_twice(
        pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = run_case(pg_server, tmp_path, capsys, kills=3, manifests=12, replicas=3,
                       seed=int(_env("CHAOS_SEED", "20261201")), max_delay=1.5,
                       settle_timeout=60)
    assert figures.kills == 3
    # a standby tries the lock every 2 to 2.4 s: the successor leads within that, plus
    # the time its own start takes when the one that won the race is the fresh replica
    assert max(figures.election) < 10.0, figures.line()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_killing_the_leader_twenty_times_never_runs_a_command_twice(
        pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kills = int(_env("CHAOS_KILLS", "20"))
    figures = run_case(pg_server, tmp_path, capsys, kills=kills,
                       manifests=int(_env("CHAOS_MANIFESTS", "24")),
                       replicas=int(_env("CHAOS_REPLICAS", "3")),
                       seed=int(_env("CHAOS_SEED", "7")),
                       max_delay=float(_env("CHAOS_MAX_DELAY", "2.0")), settle_timeout=300)
    assert figures.kills == kills
    assert max(figures.election) < 10.0, figures.line()
