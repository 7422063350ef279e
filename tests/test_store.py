"""The state store, on both backends: schema and migrations, every transition persisted,
history, claims, crashes.

The store persists the steps the lifecycle computes (tests/store_support.py drives it through
them, as the engine does); each step is one transaction. Every test taking ``ledger`` or
``store_backend`` runs twice, on SQLite and on PostgreSQL (tests/conftest.py; the PostgreSQL
half is skipped when the server binaries are absent). The tests taking ``path`` are about the
SQLite file itself (WAL, a file that is not a database, ``PRAGMA user_version``) and run on
SQLite only; their PostgreSQL counterparts are in tests/test_store_postgres.py. The crash test
SIGKILLs a writer process in the middle of a stream of transitions, on either backend, and
checks that what it left behind is whole.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pg_support import Backend
from plan_support import T0, command, hours, minutes, seconds
from store_support import Ledger

from reconciler.errors import StoreError
from reconciler.execution.engine import retry
from reconciler.model.lifecycle import Claimed, Deferred, GaveUp, TimedOut, Unresolvable, transition
from reconciler.model.manifest import Interval
from reconciler.planning.planner import Desired, desired_intent
from reconciler.store import StateStore, open_store
from reconciler.store.sqlite import SCHEMA_VERSION, Store

A = desired_intent(command("a"), T0)
B = desired_intent(command("b"), T0)


def a_version(n: str) -> Desired:
    """Another intent of manifest ``a`` (a changed payload)."""
    return desired_intent(command("a", payload={"version": n}), T0)


@pytest.fixture
def ledger(store_backend: Backend) -> Ledger:
    return Ledger(store_backend.open())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "reconciler.db"


def op_rows(store: StateStore, name: str = "a") -> list[tuple[str, int, str]]:
    return [(o.operation_id, o.attempt, o.status) for o in store.operations(name=name)]


# ------------------------------------------------------------------ schema, opening


def test_a_new_store_has_the_current_schema_version_on_either_backend(store_backend):
    with store_backend.open() as store:
        assert isinstance(store, StateStore)
        assert store.schema_version == SCHEMA_VERSION == 2
        store.check()


def test_a_reopened_store_keeps_what_was_recorded(store_backend):
    with store_backend.open() as store:
        Ledger(store).ran(A, T0)
        before = (store.intents(), store.operations())
    with store_backend.open() as store:
        assert (store.intents(), store.operations()) == before


def test_a_readonly_store_reads_and_refuses_every_write(store_backend):
    with store_backend.open() as store:
        Ledger(store).submitted(A, T0)
    with store_backend.open(readonly=True) as store:
        assert list(store.intents()) == [A.spec_hash]
        with pytest.raises(StoreError):
            Ledger(store).retired(A, T0)
        with pytest.raises(StoreError):
            Ledger(store).submitted(B, T0)
        with pytest.raises(StoreError):
            store.begin_epoch(reason="created", holder="x", now=T0)
    with store_backend.open() as store:
        assert [r.status for r in store.intents().values()] == ["submitting"]


# SQLite only: the file itself


def test_a_new_store_has_the_current_schema_version_and_uses_wal(path):
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.check()


def test_reopening_a_store_keeps_its_data_and_runs_no_migration(path, monkeypatch):
    with Store(path) as store:
        Ledger(store).submitted(A, T0)

    class NoMigrations(Sequence[str]):
        def __getitem__(self, index):
            raise AssertionError("a migration ran again")

        def __len__(self) -> int:
            return SCHEMA_VERSION

    monkeypatch.setattr("reconciler.store.sqlite._MIGRATIONS", NoMigrations())
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert list(store.intents()) == [A.spec_hash]


def test_a_store_with_a_newer_schema_is_refused_naming_both_versions(path):
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=rf"version {SCHEMA_VERSION + 1}.*\({SCHEMA_VERSION}\)"):
        Store(path)
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}"):
        Store(path, readonly=True)


def test_a_file_that_is_not_a_database_is_refused(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open state store"):
        Store(path)


def test_two_connections_creating_the_same_new_store_at_once_both_succeed(tmp_path):
    for i in range(10):
        target = tmp_path / f"race-{i}.db"
        errors: list[BaseException] = []
        gate = threading.Barrier(2)

        def open_store(target: Path = target, gate: threading.Barrier = gate,
                       errors: list[BaseException] = errors) -> None:
            gate.wait()
            try:
                Store(target).close()
            except StoreError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with Store(target) as store:
            assert store.schema_version == SCHEMA_VERSION


def test_a_readonly_store_never_changes_the_database_file(path):
    with Store(path) as store:
        Ledger(store).submitted(A, T0)
    before = (path.stat().st_mtime_ns, path.stat().st_size, path.read_bytes())
    with Store(path, readonly=True) as store:
        assert list(store.intents()) == [A.spec_hash]
        with pytest.raises(StoreError):
            Ledger(store).retired(A, T0)
        with pytest.raises(StoreError):
            Ledger(store).submitted(B, T0)
    after = (path.stat().st_mtime_ns, path.stat().st_size, path.read_bytes())
    assert after == before


def test_a_readonly_store_creates_no_file_beside_the_database(path):
    Store(path).close()
    before = sorted(p.name for p in path.parent.iterdir())
    with Store(path, readonly=True) as store:
        store.intents()
    assert sorted(p.name for p in path.parent.iterdir()) == before


def test_a_readonly_store_is_never_created(path):
    with pytest.raises(StoreError):
        Store(path, readonly=True)
    assert not path.exists()
    assert not path.parent.exists()


# ------------------------------------------------------------------ transitions, persisted


def test_a_claim_records_a_new_intent_as_submitting_before_its_post(ledger):
    ledger.submitted(A, T0)
    rec = ledger.intent(A)
    assert (rec.status, rec.attempts, rec.operation_id) == ("submitting", 1, A.operation_id(0))
    assert rec.first_submitted_at == rec.attempt_started_at == T0
    assert (rec.name, rec.window, rec.canonical) == ("a", "", A.canonical)
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "submitting")]


def test_a_claim_of_a_retry_keeps_the_first_submission_time(ledger):
    ledger.failures(A, 1, T0)
    ledger.submitted(A, T0 + minutes(1))
    rec = ledger.intent(A)
    assert (rec.status, rec.attempts, rec.operation_id) == ("submitting", 2, A.operation_id(1))
    assert rec.first_submitted_at == T0
    assert rec.attempt_started_at == T0 + minutes(1)
    assert rec.next_attempt_at is None
    assert [row[1:] for row in op_rows(ledger.store)] == [(0, "failed"), (1, "submitting")]


def test_a_claim_sending_the_same_attempt_again_keeps_one_operation_row(ledger):
    ledger.submitted(A, T0)
    ledger.submitted(A, T0 + seconds(5), attempt=0)
    assert ledger.intent(A).attempts == 1
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "submitting")]
    assert ledger.store.operations()[0].submitted_at == T0 + seconds(5)


def test_an_accepted_run_records_the_operation_as_running(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0 + seconds(1), poll_at=T0 + seconds(2))
    rec = ledger.intent(A)
    assert (rec.status, rec.next_poll_at, rec.poll_count) == ("pending", T0 + seconds(2), 0)
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "pending")]


def test_an_accepted_run_records_the_id_the_server_chose_instead_of_the_sent_one(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0 + seconds(1), server_id="server-chosen-id")
    assert ledger.intent(A).operation_id == "server-chosen-id"
    assert op_rows(ledger.store) == [("server-chosen-id", 0, "pending")]


def test_an_accepted_run_clears_the_error_of_a_deferred_lookup(ledger):
    ledger.submitted(A, T0)
    ledger.apply(A, Deferred(T0 + seconds(1), {"title": "Unavailable"}), T0)
    ledger.accepted(A, T0 + seconds(1))
    assert ledger.intent(A).last_error is None


def test_a_success_finishes_the_intent_and_its_operation(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0)
    ledger.succeeded(A, T0 + seconds(9))
    rec = ledger.intent(A)
    assert (rec.status, rec.succeeded_at, rec.next_poll_at) == ("in_sync", T0 + seconds(9), None)
    [op] = ledger.store.operations()
    assert (op.status, op.finished_at, op.result) == ("succeeded", T0 + seconds(9), {"ok": True})


def test_a_failure_with_a_next_attempt_time_persists_it(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0)
    ledger.failed(A, T0 + seconds(3), retry_at=T0 + seconds(13), title="Busy")
    rec = ledger.intent(A)
    assert (rec.status, rec.next_attempt_at, rec.next_poll_at) == (
        "failed", T0 + seconds(13), None)
    assert rec.last_error == {"title": "Busy", "detail": "it broke"}
    [op] = ledger.store.operations()
    assert (op.status, op.finished_at, op.error) == (
        "failed", T0 + seconds(3), {"title": "Busy", "detail": "it broke"})


def test_a_failure_without_a_next_attempt_stalls_the_intent(ledger):
    ledger.submitted(A, T0)
    ledger.failed(A, T0 + seconds(3), retry_at=None)
    assert ledger.intent(A).status == "stalled"
    assert ledger.intent(A).next_attempt_at is None
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "failed")]


def test_a_timeout_records_that_outcome_on_the_operation(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0)
    ledger.apply(A, TimedOut("not finished within 30m"), T0 + minutes(30))
    assert ledger.intent(A).status == "stalled"
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "timed_out")]


def test_giving_up_stalls_the_intent_only(ledger):
    ledger.failures(A, 1, T0)
    ledger.apply(A, GaveUp("retry limit 0 reached"), T0 + minutes(1))
    assert ledger.intent(A).status == "stalled"
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "failed")]


def test_an_unresolvable_intent_is_recorded_stalled_an_intent_that_could_not_be_submitted(ledger):
    ledger.apply(A, Unresolvable(A.new_intent(), {"title": "Service not found"}, "r"), T0)
    rec = ledger.intent(A)
    assert (rec.status, rec.attempts, rec.operation_id) == ("stalled", 0, None)
    assert rec.last_error == {"title": "Service not found"}
    assert ledger.store.operations() == []


def test_an_unresolvable_failed_intent_stalls_it_and_keeps_its_history(ledger):
    ledger.failures(A, 1, T0)
    ledger.apply(A, Unresolvable(A.new_intent(), {"title": "Service not found"}, "r"),
                 T0 + minutes(1))
    rec = ledger.intent(A)
    assert (rec.status, rec.attempts, rec.next_attempt_at) == ("stalled", 1, None)
    assert len(ledger.store.operations()) == 1


def test_a_deferral_schedules_the_next_lookup_and_counts_it(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0)
    ledger.apply(A, Deferred(T0 + seconds(8), {"title": "Unavailable"}), T0 + seconds(1))
    ledger.apply(A, Deferred(T0 + seconds(20)), T0 + seconds(8))
    rec = ledger.intent(A)
    assert (rec.status, rec.next_poll_at, rec.poll_count) == ("pending", T0 + seconds(20), 2)
    assert rec.last_error == {"title": "Unavailable"}


def test_an_attempt_that_never_arrived_of_a_first_attempt_leaves_the_intent_unrecorded(ledger):
    ledger.submitted(A, T0)
    ledger.never_arrived(A, T0)
    assert ledger.store.intent(A.spec_hash) is None
    assert ledger.store.operations() == []


def test_an_attempt_that_never_arrived_of_a_retry_returns_the_intent_to_failed_due_now(ledger):
    ledger.failures(A, 1, T0)
    ledger.submitted(A, T0 + minutes(1))
    ledger.never_arrived(A, T0 + minutes(2))
    rec = ledger.intent(A)
    assert (rec.status, rec.attempts, rec.next_attempt_at) == ("failed", 1, T0 + minutes(2))
    assert op_rows(ledger.store) == [(A.operation_id(0), 0, "failed")]


@pytest.mark.parametrize("why", ["orphaned", "superseded"])
def test_retiring_keeps_the_intent_as_history_only(ledger, why):
    ledger.ran(A, T0)
    ledger.retired(A, T0 + minutes(1), why)
    assert ledger.records == {}
    assert ledger.store.intents(include_retired=True)[A.spec_hash].retired == why
    assert len(ledger.store.operations(name="a")) == 1


def test_retry_gives_a_stalled_intent_a_fresh_budget_and_deadline_due_now(ledger):
    ledger.failures(A, 3, T0)
    ledger.apply(A, GaveUp("retry limit 2 reached"), T0 + minutes(3))
    assert retry(ledger.store, "a", now=T0 + hours(1)) == [A.spec_hash]
    rec = ledger.intent(A)
    assert (rec.status, rec.retry_base, rec.attempts) == ("failed", 3, 3)
    assert rec.first_submitted_at is None
    assert rec.next_attempt_at == T0 + hours(1)


def test_retry_leaves_succeeded_in_flight_and_retired_intents_alone(ledger):
    ledger.ran(A, T0)
    old = a_version("old")
    ledger.submitted(old, T0)
    ledger.failed(old, T0, retry_at=None)
    ledger.retired(old, T0, "superseded")
    ledger.submitted(B, T0)
    assert retry(ledger.store, "a", now=T0) == []
    assert retry(ledger.store, "b", now=T0) == []
    assert ledger.intent(A).status == "in_sync"
    assert ledger.intent(B).status == "submitting"


def test_a_retried_intent_starts_its_new_deadline_at_its_next_submission(ledger):
    ledger.failures(A, 1, T0)
    retry(ledger.store, "a", now=T0 + hours(1))
    ledger.submitted(A, T0 + hours(2))
    assert ledger.intent(A).first_submitted_at == T0 + hours(2)


# ------------------------------------------------------------------ history, retention


def test_history_keeps_every_attempt_of_every_intent_of_a_manifest(ledger):
    ledger.failures(A, 2, T0)
    ledger.ran(A, T0 + minutes(5))
    newer = a_version("2")
    ledger.retired(A, T0 + minutes(6), "superseded")
    ledger.ran(newer, T0 + minutes(7))
    ledger.ran(B, T0)
    assert [(o.spec_hash, o.attempt, o.status) for o in ledger.store.operations(name="a")] == [
        (A.spec_hash, 0, "failed"), (A.spec_hash, 1, "failed"),
        (A.spec_hash, 2, "succeeded"), (newer.spec_hash, 0, "succeeded")]
    assert [r.spec_hash for r in ledger.store.intents_named("a")] == [
        A.spec_hash, newer.spec_hash]
    assert ledger.store.names() == {"a", "b"}
    assert ledger.store.latest_by_name()["a"].spec_hash == newer.spec_hash


def test_prune_drops_the_oldest_retired_intents_beyond_retention_with_their_operations(
        store_backend):
    ledger = Ledger(store_backend.open(retention=2))
    versions = [a_version(str(i)) for i in range(5)]
    for i, want in enumerate(versions):
        ledger.ran(want, T0 + minutes(i))
        ledger.retired(want, T0 + minutes(i) + seconds(30), "superseded")
    ledger.ran(B, T0)
    ledger.retired(B, T0, "orphaned")
    assert ledger.store.prune() == 3
    kept = [r.spec_hash for r in ledger.store.intents_named("a")]
    assert kept == [versions[3].spec_hash, versions[4].spec_hash]
    assert {o.spec_hash for o in ledger.store.operations(name="a")} == set(kept)
    assert [r.name for r in ledger.store.intents_named("b")] == ["b"]


def test_prune_never_drops_current_or_in_flight_intents(store_backend):
    ledger = Ledger(store_backend.open(retention=1))
    versions = [a_version(str(i)) for i in range(3)]
    for i, want in enumerate(versions):
        ledger.submitted(want, T0 + minutes(i))
    ledger.retired(versions[0], T0 + minutes(5), "superseded")
    assert ledger.store.prune() == 0
    assert len(ledger.store.intents_named("a")) == 3


# ------------------------------------------------------------------ crash consistency

WORKER = r"""
import sys
from datetime import UTC, datetime, timedelta
from reconciler.model.lifecycle import (
    Accepted, Claimed, ObservedFailed, ObservedSucceeded, transition)
from reconciler.model.records import NewIntent
from reconciler.store import open_store

store = open_store(sys.argv[1])
run = sys.argv[2]
t0 = datetime(2024, 5, 1, tzinfo=UTC)


def step(rec, event, now):
    s = transition(rec, event, now)
    store.save(s)
    return s.record


print("ready", flush=True)
for i in range(100_000):
    h = f"{run}-{i:06d}"
    now = t0 + timedelta(seconds=i)
    intent = NewIntent(h, f"n-{h}", "svc", "reindex", "", "{}")
    rec = step(None, Claimed(intent, 0, h + "/0", "svc", run), now)
    if i % 3 == 0:  # a failure, then a retry
        rec = step(rec, Accepted(h + "/0", now), now)
        rec = step(rec, ObservedFailed(h + "/0", {"title": "x"}, now), now)
        rec = step(rec, Claimed(intent, 1, h + "/1", "svc", run), now)
    sent = h + f"/{1 if i % 3 == 0 else 0}"
    answered = sent + "-server" if i % 2 else sent
    rec = step(rec, Accepted(answered, now), now)
    step(rec, ObservedSucceeded(answered, {"i": i}), now)
"""


def assert_consistent(location: str) -> int:
    """Check what a killed writer left behind; return the number of intents."""
    with open_store(location) as store:
        store.check()
        if isinstance(store, Store):
            assert store._db.execute("PRAGMA foreign_key_check").fetchall() == []
        ops: dict[str, list] = {}
        for op in store.operations():
            ops.setdefault(op.spec_hash, []).append(op)
        intents = store.intents()
        assert set(ops) <= set(intents), "an operation without its intent"
        for h, rec in intents.items():
            mine = sorted(ops.get(h, []), key=lambda o: o.attempt)
            assert rec.attempts == len(mine), rec
            assert [o.attempt for o in mine] == list(range(rec.attempts))
            latest = {o.operation_id: o for o in mine}.get(rec.operation_id)
            assert latest is not None and latest.attempt == rec.current_attempt, rec
            assert all(o.status == "failed" for o in mine[:-1])
            expected = {"submitting": "submitting", "pending": "pending",
                        "in_sync": "succeeded", "failed": "failed"}[rec.status]
            assert latest.status == expected, (rec, latest)
            if rec.status == "in_sync":
                assert latest.result is not None and rec.succeeded_at is not None
        return len(intents)


def test_a_kill_9_at_any_moment_leaves_a_whole_and_consistent_store(store_backend):
    """SQLite: a writer killed mid-transaction on the file; PostgreSQL: a client killed
    with its transaction open on the server (which rolls it back)."""
    store_backend.open().close()  # created and migrated before the writers start
    rng = random.Random(20240501)
    for run in range(10):
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, store_backend.location, f"r{run}"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.2))
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        assert worker.returncode == -signal.SIGKILL
        total = assert_consistent(store_backend.location)
    assert total > 0, "the workers recorded nothing before they were killed"


# ------------------------------------------------------------------ migrations

V1_SCHEMA = """
CREATE TABLE intents (spec_hash TEXT PRIMARY KEY, name TEXT NOT NULL, service TEXT NOT NULL,
    command TEXT NOT NULL, window TEXT NOT NULL DEFAULT '', canonical TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    retry_base INTEGER NOT NULL DEFAULT 0, operation_id TEXT, service_id TEXT,
    first_submitted_at REAL, attempt_started_at REAL, next_attempt_at REAL,
    next_poll_at REAL, poll_count INTEGER NOT NULL DEFAULT 0, last_error TEXT, retired TEXT,
    revision TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL,
    succeeded_at REAL);
CREATE TABLE operations (operation_id TEXT PRIMARY KEY, spec_hash TEXT NOT NULL
    REFERENCES intents(spec_hash) ON DELETE CASCADE, name TEXT NOT NULL,
    attempt INTEGER NOT NULL, service_id TEXT, submitted_at REAL NOT NULL, finished_at REAL,
    status TEXT NOT NULL, error TEXT, result TEXT, revision TEXT NOT NULL DEFAULT '');
INSERT INTO intents (spec_hash, name, service, command, canonical, status, attempts,
    operation_id, created_at, updated_at, succeeded_at)
    VALUES ('h1', 'a', 'svc', 'reindex', '{}', 'succeeded', 1, 'op-1', 1, 2, 2);
INSERT INTO operations (operation_id, spec_hash, name, attempt, submitted_at, finished_at,
    status) VALUES ('op-1', 'h1', 'a', 0, 1, 2, 'succeeded');
PRAGMA user_version = 1;
"""


def test_a_version_1_store_is_migrated_keeping_its_intents_and_history(path):
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.close()
    with Store(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.intent("h1").status == "in_sync"
        assert [(o.operation_id, o.attempt, o.status) for o in store.operations()] == [
            ("op-1", 0, "succeeded")]
        store.check()


def test_two_intents_may_record_the_same_server_operation_id(ledger):
    ledger.submitted(A, T0)
    ledger.accepted(A, T0, server_id="one-id-for-all")
    ledger.submitted(B, T0)
    ledger.accepted(B, T0, server_id="one-id-for-all")
    assert ledger.intent(A).operation_id == ledger.intent(B).operation_id == "one-id-for-all"
    assert len(ledger.store.operations()) == 2


def test_a_snapshot_is_a_copy_that_never_changes_the_original(ledger):
    ledger.ran(A, T0)
    with ledger.store.snapshot() as scratch:
        Ledger(scratch).submitted(B, T0)
        assert set(scratch.intents()) == {A.spec_hash, B.spec_hash}
    assert set(ledger.store.intents()) == {A.spec_hash}


# ------------------------------------------------------------------ claims


def test_of_two_writers_claiming_the_same_attempt_only_the_first_is_written(ledger):
    intent = A.new_intent()
    first = transition(None, Claimed(intent, 0, A.operation_id(0), None, "r"), T0)
    second = transition(None, Claimed(intent, 0, A.operation_id(0), None, "r"), T0)
    assert ledger.store.save(first) is True
    assert ledger.store.save(second) is False
    assert len(ledger.store.operations()) == 1


def test_a_step_from_a_stale_record_writes_nothing(ledger):
    ledger.submitted(A, T0)
    stale = ledger.intent(A)
    ledger.accepted(A, T0 + seconds(1))
    late = transition(stale, Deferred(T0 + seconds(9), unsent=True), T0 + seconds(2))
    assert ledger.store.save(late) is False
    assert ledger.intent(A).status == "pending"


def test_two_processes_on_one_store_never_both_claim(store_backend):
    with store_backend.open() as one, store_backend.open() as two:
        intent = A.new_intent()
        steps = [transition(None, Claimed(intent, 0, A.operation_id(0), None, "r"), T0)
                 for _ in range(2)]
        assert [one.save(steps[0]), two.save(steps[1])] == [True, False]


def test_the_latest_window_of_each_manifest_counts_history_too(ledger):
    early = desired_intent(command("a", policy=Interval(every=hours(1))), T0)
    late = desired_intent(command("a", policy=Interval(every=hours(1))), T0 + hours(2))
    ledger.ran(early, T0)
    ledger.ran(late, T0 + hours(2))
    ledger.retired(late, T0 + hours(2), "superseded")
    assert ledger.store.latest_windows() == {"a": late.window}


def test_epochs_are_recorded_and_their_adoption_with_them(ledger):
    assert ledger.store.epoch() is None
    epoch = ledger.store.begin_epoch(reason="created", holder="pod-a/1", now=T0)
    assert ledger.store.epoch() == epoch and epoch.adopted_at is None
    ledger.store.adopted(epoch, now=T0 + seconds(3))
    assert ledger.store.epoch().adopted_at == T0 + seconds(3)


@pytest.mark.parametrize("recorded", [False, True], ids=["new-intent", "recorded-intent"])
def test_of_writers_racing_from_one_version_exactly_one_wins(store_backend, recorded):
    """Four connections save steps computed from the same version at the same moment: the
    compare-and-set lets exactly one through (for a new intent, the primary key decides)."""
    stores = [store_backend.open() for _ in range(4)]
    base = None
    if recorded:
        Ledger(stores[0]).submitted(A, T0)
        base = stores[0].intent(A.spec_hash)
    for round_ in range(5):
        if recorded:
            base = stores[0].intent(A.spec_hash)
            event = Deferred(T0 + seconds(round_ + 1), unsent=True)
        else:
            if base is not None or stores[0].intent(A.spec_hash) is not None:
                Ledger(stores[0]).never_arrived(A, T0)
            event = Claimed(A.new_intent(), 0, A.operation_id(0), None, f"r{round_}")
        steps = [transition(base, event, T0 + seconds(i)) for i in range(len(stores))]
        gate = threading.Barrier(len(stores))
        results: list[bool] = [False] * len(stores)

        def save(i: int, steps=steps, gate=gate, results=results) -> None:
            gate.wait()
            results[i] = stores[i].save(steps[i])

        threads = [threading.Thread(target=save, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(results) == 1, results
        winner = steps[results.index(True)].record
        assert stores[1].intent(A.spec_hash) == winner
        assert len(stores[2].operations()) == 1


# ------------------------------------------------------------------ repeated reads


def test_a_repeated_read_sees_a_commit_of_another_connection(path: Path) -> None:
    reader = Store(path)
    assert reader.intents() == {} and reader.names() == set()
    writer = Ledger(Store(path))
    writer.submitted(A, T0)
    assert [r.name for r in reader.intents().values()] == ["a"]
    assert reader.names() == {"a"} and set(reader.latest_by_name()) == {"a"}


def test_a_repeated_read_sees_this_connections_own_commit(path: Path) -> None:
    ledger = Ledger(Store(path))
    ledger.submitted(A, T0)
    assert ledger.store.intents()[A.spec_hash].status == "submitting"
    ledger.accepted(A, T0 + seconds(1), poll_at=T0 + seconds(2))
    assert ledger.store.intents()[A.spec_hash].status == "pending"


def test_changing_what_a_read_returned_does_not_change_the_next_read(path: Path) -> None:
    ledger = Ledger(Store(path))
    ledger.submitted(A, T0)
    ledger.store.intents().clear()
    ledger.store.names().clear()
    assert list(ledger.store.intents()) == [A.spec_hash] and ledger.store.names() == {"a"}
