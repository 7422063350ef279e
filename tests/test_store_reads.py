"""The SQLite store's kept reads: a daemon reads the same records pass after pass, so a
read is kept until the store changes, and a save of this connection carries the saved
record into the kept reads instead of reading every row again. What a kept read says is
always what reading the file again says."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from plan_support import T0, command
from store_support import Ledger

from reconciler.model.lifecycle import Retired
from reconciler.planning.planner import Desired, desired_intent
from reconciler.store.sqlite import Store

MINUTE = timedelta(minutes=1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.db") as opened:
        yield opened


def fresh(store: Store) -> Store:
    return Store(store.path, readonly=True)


def reads(store: Store) -> tuple[object, ...]:
    return (store.intents(), store.intents(include_retired=True), store.latest_by_name(),
            store.latest_windows(), store.names())


def selects(store: Store) -> list[str]:
    """The full reads of the intents table from now on (not the one-row lookups)."""
    seen: list[str] = []
    store._db.set_trace_callback(
        lambda sql: seen.append(sql) if sql.startswith("SELECT * FROM intents") and
        "spec_hash = " not in sql else None)
    return seen


def wants(count: int) -> list[Desired]:
    return [desired_intent(command(f"m{i}"), T0) for i in range(count)]


def test_a_read_is_kept_until_the_store_changes(store: Store) -> None:
    ledger = Ledger(store)
    ledger.submitted(wants(1)[0], T0)
    store.intents()
    seen = selects(store)
    store.intents()
    assert seen == []


def test_a_save_is_carried_into_the_kept_reads_without_reading_them_again(
        store: Store) -> None:
    ledger = Ledger(store)
    a, b = wants(2)
    ledger.submitted(a, T0)
    reads(store)
    seen = selects(store)
    ledger.submitted(b, T0 + MINUTE)
    ledger.accepted(a, T0 + 2 * MINUTE)
    assert set(store.intents()) == {a.spec_hash, b.spec_hash}
    assert seen == []


def test_kept_reads_say_what_reading_the_file_again_says(store: Store) -> None:
    ledger = Ledger(store)
    a, b, c = wants(3)
    windowed = desired_intent(command("w", policy={"interval": "1h"}), T0)
    steps = [lambda: ledger.submitted(a, T0), lambda: ledger.accepted(a, T0 + MINUTE),
             lambda: ledger.submitted(b, T0 + MINUTE), lambda: ledger.succeeded(a, T0),
             lambda: ledger.failed(b, T0 + 2 * MINUTE, retry_at=None),
             lambda: ledger.submitted(windowed, T0 + 3 * MINUTE),
             lambda: ledger.apply(a, Retired("orphaned", "manifest removed"), T0 + MINUTE),
             lambda: ledger.submitted(c, T0 - MINUTE)]  # a clock set back
    for step in steps:
        reads(store)
        step()
        with fresh(store) as other:
            assert reads(store) == reads(other)


def test_a_commit_of_another_connection_is_read_again(store: Store) -> None:
    a, b = wants(2)
    Ledger(store).submitted(a, T0)
    store.intents()
    with Store(store.path) as other:
        Ledger(other).submitted(b, T0)
    assert set(store.intents()) == {a.spec_hash, b.spec_hash}


def test_a_failed_compare_and_set_changes_no_kept_read(store: Store) -> None:
    ledger = Ledger(store)
    a = wants(1)[0]
    step = ledger.submitted(a, T0)
    before = store.intents()
    assert not store.save(step)  # computed from "no record": the record exists now
    assert store.intents() == before


def test_the_trace_sees_selects(store: Store) -> None:
    seen = selects(store)
    store._memo.clear()
    store.intents()
    assert seen
    assert isinstance(store._db, sqlite3.Connection)


def test_a_carried_record_is_the_one_reading_it_back_gives(store: Store) -> None:
    """The store bounds what it keeps (a 900 KiB error detail is cut): a kept read holds
    the record as stored, not as it was handed to :meth:`Store.save`."""
    ledger = Ledger(store)
    a = wants(1)[0]
    ledger.submitted(a, T0)
    ledger.accepted(a, T0)
    store.intents()
    ledger.failed(a, T0 + MINUTE, retry_at=None, title="Boom" + "d" * (900 * 1024))
    kept = store.intents()[a.spec_hash]
    with fresh(store) as other:
        assert kept == other.intents()[a.spec_hash]
    assert len(str(kept.last_error)) < 10_000
