"""The daemon (``reconciler run``): signals, triggers, ``--once`` exit rules and crash
recovery, with the daemon as a real subprocess where signals or a kill -9 are the point,
and in-process (fast polling) where only the outcome matters.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from integration_support import (
    executions,
    manifest,
    operations,
    reconciler,
    run_daemon_once,
    running_emulator,
    start_daemon,
    status_json,
    stop_process,
    wait_for,
    write_manifest,
    write_manifests,
)

from reconciler.ailake.emulator import RunningEmulator
from reconciler.model.lifecycle import IN_FLIGHT
from reconciler.model.lifecycle import IntentState as S
from reconciler.runtime import pacing
from reconciler.runtime.pacing import Pacer

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


def statuses(state: Path) -> dict[str, str]:
    """Current (not retired) intent statuses by name, read straight from SQLite."""
    if not state.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            rows = db.execute("SELECT name, status FROM intents WHERE retired IS NULL")
            return dict(rows.fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def remove_state(state: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)


def set_faults(emu: RunningEmulator, **faults: object) -> None:
    httpx.put(f"{emu.url}/_emulator/faults", json=faults, timeout=10).raise_for_status()


# ---------------------------------------------------------------------------- signals


def test_sigterm_during_a_pass_exits_0_within_the_grace_period_with_a_consistent_store(
        tmp_path: Path) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    names = ["one", "two", "three"]
    write_manifests(manifests, [manifest(n, "quick", payload={"n": n}) for n in names])
    with running_emulator(faults={"latency": "2s"}) as emu:  # every API answer is slow
        daemon = start_daemon(manifests, emu.url, state, "--listen", "",
                              "--grace-period", "1s", "--interval", "1s",
                              log=tmp_path / "daemon.log")
        try:
            # the write-ahead records exist: the run POSTs are on the wire, unanswered
            wait_for(lambda: len(statuses(state)) == 3, timeout=20, what="submissions")
            signalled = time.monotonic()
            code = stop_process(daemon, signal.SIGTERM, timeout=10)
            took = time.monotonic() - signalled
        finally:
            if daemon.poll() is None:
                daemon.kill()
        log = (tmp_path / "daemon.log").read_text()
        assert code == 0, log[-3000:]
        assert took < 1 + 2.5, took  # the grace period, plus process exit
        with sqlite3.connect(state) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = db.execute("SELECT status, operation_id FROM intents").fetchall()
        assert {s for s, _ in rows} <= IN_FLIGHT
        assert all(op for _, op in rows)

        # a restart resolves what was on the wire: each command runs exactly once
        set_faults(emu, latency="0s")
        code = asyncio.run(run_daemon_once(manifests, emu.url, state))
        assert code == 0
        ran = executions(emu.url)
        assert sorted(e["operationId"] for e in ran) == sorted(op for _, op in rows)
        assert all(op["executions"] == 1 for op in operations(emu.url))
        assert set(status_json(state).keys()) == set(names)


def test_sighup_triggers_an_immediate_reconcile_after_reconciler_retry(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("doomed", "broken", retry={"limit": 0})])
    daemon = start_daemon(manifests, emulator.url, state, "--listen", "",
                          "--interval", "1h", log=tmp_path / "daemon.log")
    try:
        wait_for(lambda: statuses(state).get("doomed") == S.STALLED, timeout=20,
                 what="the command to stall")
        assert len(executions(emulator.url)) == 1
        done = reconciler("retry", "doomed", "--state", state)
        assert done.returncode == 0, done.stderr
        time.sleep(1.5)  # the daemon sleeps (interval 1h): nothing happens by itself
        assert len(executions(emulator.url)) == 1

        daemon.send_signal(signal.SIGHUP)

        wait_for(lambda: len(executions(emulator.url)) == 2, timeout=5,
                 what="a run after SIGHUP")
        assert daemon.poll() is None  # SIGHUP reloads, it does not stop
    finally:
        code = stop_process(daemon)
    assert code == 0


def test_a_manifest_written_while_the_daemon_runs_is_executed_within_seconds(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("first", "instant")])
    daemon = start_daemon(manifests, emulator.url, state, "--listen", "127.0.0.1:0",
                          "--interval", "1h", log=tmp_path / "daemon.log")
    try:
        wait_for(lambda: statuses(state).get("first") == S.IN_SYNC, timeout=20,
                 what="the first manifest")
        time.sleep(0.5)
        write_manifest(manifests, manifest("second", "instant"))
        written = time.monotonic()

        wait_for(lambda: len(executions(emulator.url)) == 2, timeout=8,
                 what="the new manifest to run")
        assert time.monotonic() - written < 8
        wait_for(lambda: statuses(state).get("second") == S.IN_SYNC, timeout=8,
                 what="the new manifest to succeed")
    finally:
        code = stop_process(daemon)
    assert code == 0, (tmp_path / "daemon.log").read_text()[-2000:]
    assert len(executions(emulator.url)) == 2


# ---------------------------------------------------------------------------- --once


async def test_once_with_a_suspended_manifest_exits_0_and_submits_nothing_for_it(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("active", "instant"),
                                manifest("paused", "instant", payload={"p": 1}, suspend=True)])

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 20)

    assert code == 0
    assert [e["payload"] for e in executions(emulator.url)] == [None]
    rows = status_json(state, "--manifests", str(manifests))
    assert rows["paused"]["state"] == S.SUSPENDED
    assert rows["active"]["state"] == S.IN_SYNC


async def test_once_with_a_dependent_of_a_suspended_manifest_exits_0_instead_of_waiting(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [
        manifest("paused", "instant", suspend=True),
        manifest("after-paused", "instant", dependsOn=["paused"]),
        manifest("after-that", "instant", dependsOn=["after-paused"]),
        manifest("active", "instant"),
    ])

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 20)

    assert code == 0
    assert len(executions(emulator.url)) == 1


async def test_once_with_a_dependency_on_an_invalid_manifest_exits_1_instead_of_waiting(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [
        manifest("broken-base", "instant", timeout="forever"),  # invalid: skipped
        manifest("needs-base", "instant", dependsOn=["broken-base"]),
        manifest("active", "instant"),
    ])

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 20)

    assert code == 1
    assert len(executions(emulator.url)) == 1


async def test_once_waits_out_retry_backoffs_and_exits_0_when_a_retry_succeeds(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("flaky-one", "flaky",
                                         retry={"limit": 2, "backoff": "300ms"})])

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 20)

    assert code == 0
    assert [e["status"] for e in executions(emulator.url)] == ["failed", "succeeded"]


# ---------------------------------------------------------------------------- crash recovery


async def test_an_in_flight_operation_is_adopted_after_kill_9_and_a_lost_store(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("slow-one", "long", payload={"x": 1})])
    daemon = start_daemon(manifests, emulator.url, state, "--listen", "",
                          log=tmp_path / "daemon.log")
    try:
        wait_for(lambda: statuses(state).get("slow-one") == S.PENDING, timeout=20,
                 what="the operation to be pending")
        assert [e["status"] for e in executions(emulator.url)] == ["pending"]
    finally:
        daemon.kill()  # SIGKILL: no chance to record anything more
        daemon.wait(timeout=10)
    remove_state(state)

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 30)

    assert code == 0
    ran = executions(emulator.url)
    assert len(ran) == 1 and ran[0]["status"] == "succeeded"
    assert [op["posts"] for op in operations(emulator.url)] == [1]
    row = status_json(state)["slow-one"]
    assert row["state"] == S.IN_SYNC and row["attempts"] == 1
    assert row["operationId"] == ran[0]["operationId"]


async def test_a_kill_9_then_restart_with_the_store_resumes_without_resubmitting(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest(f"job-{i}", "medium", payload={"i": i})
                                for i in range(3)])
    daemon = start_daemon(manifests, emulator.url, state, "--listen", "",
                          log=tmp_path / "daemon.log")
    try:
        wait_for(lambda: list(statuses(state).values()) == [S.PENDING] * 3, timeout=20,
                 what="three pending operations")
    finally:
        daemon.kill()
        daemon.wait(timeout=10)

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 30)

    assert code == 0
    assert len(executions(emulator.url)) == 3
    assert all(op["posts"] == 1 for op in operations(emulator.url))


async def test_once_with_an_unknown_service_name_stalls_it_without_a_post_and_exits_1(
        tmp_path: Path, emulator: RunningEmulator) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state.db"
    write_manifests(manifests, [manifest("lost", "instant", service=None,
                                         service_name="no-such-service"),
                                manifest("fine", "instant", service=None,
                                         service_name="warehouse")])

    code = await asyncio.wait_for(run_daemon_once(manifests, emulator.url, state), 20)

    assert code == 1
    assert [op["command"] for op in operations(emulator.url)] == ["instant"]
    row = status_json(state)["lost"]
    assert row["state"] == S.STALLED and row["error"]["title"] == "Service not found"
    history = reconciler("history", "lost", "--state", state)
    assert history.returncode == 0 and "no operation was sent yet" in history.stdout


async def test_once_gives_up_with_exit_1_when_the_api_keeps_failing(
        tmp_path: Path) -> None:
    """``run --once`` in a pipeline must not wait forever for an API that is down."""
    manifests = tmp_path / "manifests"
    write_manifests(manifests, [manifest("job", "quick")])
    with running_emulator(faults={"errorRate": 1.0}) as emu:
        started = time.monotonic()
        code = await run_daemon_once(manifests, emu.url, tmp_path / "state.db",
                                     client={"get_retries": 0})
        assert code == 1
        assert time.monotonic() - started < 30
        assert executions(emu.url) == []


# ------------------------------------------------------------------ the wait between passes


def _due() -> Any:
    return SimpleNamespace(executable=["due"], wake_at=None)


def test_work_due_after_a_pass_that_recorded_something_starts_the_next_pass_at_once() -> None:
    pacer = Pacer(interval=60.0)
    pacer.passed(ok=True, transitions_before=0, recorded=True)  # polls answered "pending"
    assert [pacer.until_wake(_due(), T0) for _ in range(6)] == [0.0] * 6


def test_passes_in_a_row_that_record_nothing_wait_between_them() -> None:
    pacer = Pacer(interval=60.0)
    pacer.passed(ok=True, transitions_before=0, recorded=False)
    waits = [pacer.until_wake(_due(), T0) for _ in range(pacing.IDLE_PASSES + 2)]
    assert waits == [0.0] * pacing.IDLE_PASSES + [pacing.MIN_RETRY_SLEEP] * 2


def test_after_failed_passes_the_recovery_wait_doubles_up_to_the_interval() -> None:
    pacer = Pacer(interval=3.0)
    waits = []
    for _ in range(4):
        pacer.passed(ok=False, transitions_before=pacer.transitions, recorded=False)
        waits.append(pacer.until_wake(_due(), T0))
    assert waits == [1.0, 2.0, 3.0, 3.0] and pacer.failing_passes == 4


def test_a_good_pass_ends_the_recovery() -> None:
    pacer = Pacer(interval=60.0)
    pacer.passed(ok=False, transitions_before=0, recorded=False)
    pacer.passed(ok=True, transitions_before=0, recorded=True)
    assert pacer.recovery is None and pacer.failing_passes == 0
    assert pacer.until_wake(SimpleNamespace(executable=[], wake_at=None), T0) == float("inf")
