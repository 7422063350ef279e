"""Exactly-once under crashes: kill -9 the daemon at random moments while it converges.

The emulator runs as its own process with ``dedup: false`` (a repeated ``operation-id``
executes again, so any blind re-POST shows up as a second execution) and with faults on:
503s, 429s, connections dropped after the run was accepted, a little latency. The daemon
(``reconciler run --once``) is started and SIGKILLed at seeded random moments (50 ms to
1.5 s after its start: during interpreter start-up, probing, submitting, resolving and
polling), at least ``CHAOS_KILLS`` times, then run to its end without kills. Whenever a
run settles everything before its kill, every manifest's ``rerun`` is bumped (a new
generation of intents, the old ones superseded), so later kills land on fresh work rather
than on idle restarts. Afterwards ``GET /_emulator/executions`` must show, per manifest
and generation: exactly one execution of a succeeding command, exactly
``retry.limit + 1`` of an always failing one, exactly 2 of a command failing its first
execution (1 in later generations: the emulator's ``failTimes`` counts per command), none
of a manifest blocked behind a failing one; every operation id executed at most once;
every manifest settled. Finally the state store is deleted and the daemon runs again: it
must adopt everything and execute nothing.

Known, accepted race (DESIGN section 3): a run POST killed mid-flight that the server
processes only *after* the restarted daemon's lookup of the same id answered 404 would
execute twice. Against a local emulator the restart takes far longer (interpreter start,
~0.6 s) than the server needs to process a request already sent (~latency), so it does
not show up here; if it ever does, the assertion below reports the operation id, and the
run logs in ``tmp_path/logs`` tell which run posted it.

Default: 10 kills, 20 manifests (about 30 s). The big run is opt-in:
``CHAOS_KILLS=200 CHAOS_MANIFESTS=100 pytest -m slow tests/chaos/test_chaos.py`` (also
``CHAOS_SEED``, ``CHAOS_MAX_DELAY``: the latest kill moment, default 2.5 s there, as
loading 100 manifests makes start-up longer).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from chaos_support import (
    Daemon,
    EmulatorProcess,
    build_scenario,
    count_by_manifest,
    operation_ids,
    status,
)

from reconciler.store.sqlite import Store

FAULTS = {"errorRate": 0.1, "throttleRate": 0.1, "retryAfter": 0, "dropRate": 0.1,
          "latency": "5ms"}
#: the daemon's API rate limit is lifted so the default run stays well under 90 s
DAEMON_FLAGS = ("--rate-limit", "0")


def _chaos(tmp_path: Path, capsys: pytest.CaptureFixture[str], *, kills: int,
           manifests: int, seed: int, final_timeout: float, max_delay: float) -> None:
    started = time.monotonic()
    scenario = build_scenario(manifests, seed=seed, faults=FAULTS)
    config, folder = scenario.write(tmp_path)
    generation = 0
    ids = {op: (name, 0) for op, name in operation_ids(folder).items()}
    db = tmp_path / "state.db"
    emulator = EmulatorProcess(config, tmp_path / "emulator.log")
    try:
        daemon = Daemon(folder, emulator.url, db, tmp_path / "logs", DAEMON_FLAGS)
        rng = random.Random(seed)
        delivered = 0
        runs = 0
        phases: Counter[str] = Counter()
        while delivered < kills:
            runs += 1
            assert runs <= kills * 3, "the daemon keeps exiting before it can be killed"
            # 50 ms .. max_delay, skewed late (sqrt): the interpreter alone needs ~0.6 s
            # to start, and most kills should land while the daemon is probing,
            # submitting, resolving or polling, not before it did anything
            run = daemon.run_and_kill(0.05 + (max_delay - 0.05) * rng.random() ** 0.5)
            if run.killed:
                delivered += 1
                phases[run.phase()] += 1
            else:
                assert run.returncode in (0, 1), run.log.read_text()[-3000:]
            if not run.killed or run.phase() == "converged":
                # This generation settled: bump every manifest's rerun, so the kills to
                # come land on fresh work (and on spec changes) instead of idle restarts.
                generation += 1
                scenario.write(tmp_path, generation)
                ids.update((op, (name, generation))
                           for op, name in operation_ids(folder).items())
        kill_elapsed = time.monotonic() - started
        executions_at_last_kill = len(emulator.executions())

        # kill -9 at any instant leaves an intact store
        with Store(db) as store:
            store.check()

        final = daemon.run_to_end(final_timeout)
        assert final.returncode in (0, 1), final.log.read_text()[-3000:]

        executions = emulator.executions()
        per_name, per_id, strangers = count_by_manifest(executions, ids)
        assert not strangers, f"executions of operation ids no manifest owns: {strangers}"
        twice = {op: n for op, n in per_id.items() if n > 1}
        assert not twice, (
            f"operation ids executed more than once (double run): {twice}; "
            f"logs in {daemon.logs}")
        wrong = {f"{name}@{gen}": (per_name[name, gen], scenario.executions(name, gen))
                 for name in scenario.expected for gen in range(generation + 1)
                 if per_name[name, gen] != scenario.executions(name, gen)}
        assert not wrong, f"executions per manifest@generation (got, want): {wrong}"
        # every execution carried its manifest's payload
        payloads = {m["metadata"]["name"]: m["spec"]["payload"] for m in scenario.manifests}
        for execution in executions:
            assert execution["payload"] == payloads[ids[execution["operationId"]][0]]
            assert execution["status"] in ("succeeded", "failed")

        rows = status(folder, db)
        unsettled = {name: rows.get(name, {}).get("state")
                     for name, exp in scenario.expected.items()
                     if rows.get(name, {}).get("state") not in exp.states}
        assert not unsettled, f"manifests not settled as expected: {unsettled}"
        assert final.returncode == 1  # the always failing commands stall

        # a lost state store: adopt everything, execute nothing
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        recovered = daemon.run_to_end(final_timeout, label="fresh-store")
        assert recovered.returncode == 1, recovered.log.read_text()[-3000:]
        after = emulator.executions()
        assert len(after) == len(executions), (
            f"{len(after) - len(executions)} new executions after the state store was lost")
        rows_after = status(folder, db)
        assert {n: r["state"] for n, r in rows_after.items()} == \
            {n: r["state"] for n, r in rows.items()}

        operations = emulator.operations()
        posts = sum(op["posts"] for op in operations)
        sends: Counter[str] = Counter()
        unknown = 0
        for run in daemon.runs:
            for event in run.events():
                if event.get("event") == "transition" and event.get("state") == "submitting":
                    sends[event["operation_id"]] += 1
                unknown += event.get("event") == "run_outcome_unknown"
        resent = sum(1 for n in sends.values() if n > 1)
        elapsed = time.monotonic() - started
        with capsys.disabled():
            print(
                f"\nchaos: {delivered} kills in {runs} runs ({kill_elapsed:.1f}s), "
                f"{manifests} manifests x {generation + 1} generations, "
                f"{len(executions)} executions "
                f"({executions_at_last_kill} before the final run), {posts} run POSTs "
                f"processed, {unknown} with outcome unknown, {resent} attempts re-sent "
                f"after a lookup 404, 0 double runs; final run {final.elapsed:.1f}s, "
                f"fresh-store run {recovered.elapsed:.1f}s, 0 new executions; "
                f"total {elapsed:.1f}s"
                f"\nchaos: kills landed {dict(sorted(phases.items()))}")
    finally:
        emulator.stop()


@pytest.mark.timeout(240)
def test_kill_minus_nine_never_runs_a_command_twice_nor_forgets_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _chaos(tmp_path, capsys, kills=10, manifests=20, seed=20240611, final_timeout=90,
           max_delay=1.5)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill_minus_nine_big(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _chaos(tmp_path, capsys, kills=int(os.environ.get("CHAOS_KILLS", "200")),
           manifests=int(os.environ.get("CHAOS_MANIFESTS", "100")),
           seed=int(os.environ.get("CHAOS_SEED", "7")), final_timeout=600,
           max_delay=float(os.environ.get("CHAOS_MAX_DELAY", "2.5")))
