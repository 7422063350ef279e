"""State store: SQLite (WAL), one transaction per transition, versioned schema.

The store is a cache of the truth on the server (every operation id can be derived from
a manifest and looked up again), so it may be lost; it must never be corrupted. Every
write below is a single transaction, and the engine records an intent as ``submitting``
*before* the run POST it describes (write-ahead), so a kill -9 at any instant leaves a
state from which the next start resumes without running anything twice.

Tables: ``intents`` (one row per spec hash: the current status of one intent) and
``operations`` (one row per attempt: the history). Times are UTC epoch seconds.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from reconciler.errors import StoreError
from reconciler.model.lifecycle import OperationChange, Step
from reconciler.model.records import Epoch, IntentRecord, OperationRecord
from reconciler.store.rows import from_row, to_datetime, to_json, to_row, to_timestamp
from reconciler.store.sqlite_schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    CorruptStoreError,
    migrate,
    open_database,
    prepare,
    readonly_uri,
    recovery_hint,
    store_error,
)

T = TypeVar("T")

__all__ = ["SCHEMA_VERSION", "CorruptStoreError", "Store", "readonly_uri", "recovery_hint",
           "store_error"]

#: the migrations, version N at index N - 1 (looked up here when a store opens)
_MIGRATIONS: Sequence[str] = MIGRATIONS


_ts = to_timestamp
_dt = to_datetime
_json = to_json
_from_row = from_row
_to_row = to_row


def _upsert(db: sqlite3.Connection, table: str, key: Sequence[str],
            row: Mapping[str, Any]) -> None:
    columns = ", ".join(row)
    marks = ", ".join(f":{c}" for c in row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in key)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608 - fixed names
               f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates}", row)


#: the memo keys of the two intent reads (all, and those not retired)
_ALL = "intents"
_LIVE = "live intents"


def _carried(key: str, value: Any, rec: IntentRecord) -> Any:
    """A kept SQL read with ``rec`` (just saved) in it, as reading it again would give it
    (a new intent last); None: this read must be made again (a read derived from the
    table is made again from the carried table, without SQL)."""
    if key == _ALL:
        value[rec.spec_hash] = rec
    elif key == "names":
        value = value | {rec.name}
    elif key == "windows":
        if rec.window and rec.window > value.get(rec.name, ""):
            value[rec.name] = rec.window
    else:
        return None
    return value


def _latest_of(records: Iterable[IntentRecord]) -> dict[str, IntentRecord]:
    """The most recently changed record of every name (updated, then created), by name."""
    latest: dict[str, IntentRecord] = {}
    for rec in records:
        shown = latest.get(rec.name)
        if shown is None or (rec.updated_at, rec.created_at) >= (shown.updated_at,
                                                                 shown.created_at):
            latest[rec.name] = rec
    return {name: latest[name] for name in sorted(latest)}


def _update_operation(db: sqlite3.Connection, change: OperationChange) -> None:
    values: dict[str, Any] = {"status": str(change.status)}
    if change.operation_id is not None:
        values["operation_id"] = change.operation_id
    if change.finished_at is not None:
        values["finished_at"] = _ts(change.finished_at)
    if change.error is not None:
        values["error"] = _json(change.error)
    if change.result is not None:
        values["result"] = _json(change.result)
    sets = ", ".join(f"{c} = :{c}" for c in values)
    db.execute(f"UPDATE operations SET {sets} "  # noqa: S608 - fixed column names
               "WHERE spec_hash = :spec_hash AND attempt = :attempt",
               {**values, "spec_hash": change.spec_hash, "attempt": change.attempt})


class Store:
    """The SQLite state store. Thread-safe; every public write is one transaction.

    Every ``sqlite3`` error becomes one :class:`StoreError` naming the file, what was being
    done and what to do (a damaged file: :class:`CorruptStoreError`, whose message says how
    to recover).
    """

    shared = False

    def __init__(self, path: str | Path, *, retention: int = 50, readonly: bool = False) -> None:
        """Open (creating and migrating) the store at ``path``; ``":memory:"`` for tests.

        ``retention``: finished, superseded or orphaned intents kept per manifest name.
        ``readonly``: open an existing store without changing it or creating any file
        beside it (``plan``, ``status``; see :func:`readonly_uri`), on a read-only mount too.
        """
        self.path = str(path)
        self.retention = retention
        self.readonly = readonly
        self._lock = threading.RLock()
        #: commits made through this connection (SQLite's data_version counts the others)
        self._writes = 0
        #: read name -> (the store's generation when read, the value read)
        self._memo: dict[str, tuple[tuple[int, int], Any]] = {}
        #: how a read-only store was opened: "ro" or "immutable" (None: read-write)
        self.mode: str | None
        self._db, self.mode = open_database(self.path, readonly=readonly)
        prepare(self._db, self.path, self.mode, readonly=readonly, upgrade=self._migrate)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            changes = self._db.total_changes
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise store_error(self.path, exc, "write") from None
            finally:
                if self._db.total_changes != changes:  # a commit that changed nothing
                    self._writes += 1                   # (prune, mostly) keeps the reads

    def _generation(self, db: sqlite3.Connection) -> tuple[int, int]:
        return self._writes, int(db.execute("PRAGMA data_version").fetchone()[0])

    def generation(self) -> tuple[int, int]:
        """Changes with every commit, of this connection or any other."""
        with self._reading("the data version") as db:
            return self._generation(db)

    def _memoized(self, key: str, what: str, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read``'s value, read again only when the store changed since: a commit of
        this connection, or of any other (``PRAGMA data_version``). A daemon's steady pass
        reads the same 10,000 records several times; decoding them is most of its cost."""
        with self._reading(what) as db:
            generation = self._generation(db)
            hit = self._memo.get(key)
            if hit is not None and hit[0] == generation:
                return cast(T, hit[1])
            value = read(db)
            self._memo[key] = (generation, value)
            return value

    @contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection, locked, for one read: any failure (SQLite's, or a record that
        does not decode) is one :class:`StoreError`."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.DatabaseError as exc:
                raise store_error(self.path, exc, f"read {what}") from None
            except (ValueError, TypeError, KeyError) as exc:
                raise store_error(self.path, exc, f"decode {what}") from None

    def _migrate(self) -> None:
        """Bring the schema up to date with :data:`_MIGRATIONS`, one transaction each."""
        migrate(self._db, self.path, tx=self._tx, migrations=_MIGRATIONS)

    def snapshot(self) -> Store:
        """An in-memory copy of this store: changing it never touches the original."""
        copy = Store(":memory:", retention=self.retention)
        with self._reading("the whole store (a snapshot)"):
            self._db.backup(copy._db)
        return copy

    @property
    def schema_version(self) -> int:
        with self._reading("the schema version") as db:
            return int(db.execute("PRAGMA user_version").fetchone()[0])

    def check(self, *, quick: bool = False) -> None:
        """Raise :class:`CorruptStoreError` unless SQLite's integrity check passes
        (``quick``: ``PRAGMA quick_check``, which skips matching indexes to tables: what
        the daemon runs at start; else ``PRAGMA integrity_check``: ``store check``)."""
        pragma = "quick_check" if quick else "integrity_check"
        with self._reading(f"the store ({pragma})") as db:
            found = [str(r[0]) for r in db.execute(f"PRAGMA {pragma}(20)").fetchall()]
        if found != ["ok"]:
            shown = "; ".join(found[:5]) + ("; ..." if len(found) > 5 else "")
            raise CorruptStoreError(f"state store {self.path} is damaged ({pragma}: "
                                    f"{shown}); " + recovery_hint(self.path))

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _intent(row: sqlite3.Row) -> IntentRecord:
        return _from_row(IntentRecord, row)

    @staticmethod
    def _operation(row: sqlite3.Row) -> OperationRecord:
        return _from_row(OperationRecord, row)

    def intents(self, *, include_retired: bool = False) -> dict[str, IntentRecord]:
        """Recorded intents by spec hash (by default only those not retired). Every read
        of intents shares one decoded copy of the table (:meth:`_every_intent`)."""
        if include_retired:
            return dict(self._every_intent())
        return dict(self._memoized(_LIVE, "the intents", lambda _db: {
            h: r for h, r in self._every_intent().items() if r.retired is None}))

    def _every_intent(self) -> dict[str, IntentRecord]:
        def read(db: sqlite3.Connection) -> dict[str, IntentRecord]:
            rows = db.execute("SELECT * FROM intents ORDER BY name, created_at").fetchall()
            return {row["spec_hash"]: self._intent(row) for row in rows}

        return self._memoized(_ALL, "the intents", read)

    def intent(self, spec_hash: str) -> IntentRecord | None:
        with self._reading("an intent") as db:
            row = db.execute(
                "SELECT * FROM intents WHERE spec_hash = ?", (spec_hash,)
            ).fetchone()
            return self._intent(row) if row else None

    def intents_named(self, name: str) -> list[IntentRecord]:
        """Every intent of one manifest, oldest first (history included)."""
        with self._reading("the intents of a manifest") as db:
            rows = db.execute(
                "SELECT * FROM intents WHERE name = ? ORDER BY created_at", (name,)
            ).fetchall()
            return [self._intent(r) for r in rows]

    def latest_by_name(self) -> dict[str, IntentRecord]:
        """The most recently changed intent of every manifest name ever recorded."""
        return dict(self._memoized("latest", "the intents",
                                   lambda _db: _latest_of(self._every_intent().values())))

    def operations(self, *, name: str | None = None) -> list[OperationRecord]:
        """Operations (attempts), oldest first; optionally of one manifest."""
        query, params = "SELECT * FROM operations", ()
        if name is not None:
            query, params = query + " WHERE name = ?", (name,)  # type: ignore[assignment]
        with self._reading("the operations") as db:
            rows = db.execute(query + " ORDER BY submitted_at, attempt", params).fetchall()
            return [self._operation(r) for r in rows]

    def recent_durations(self, *, limit: int = 5000) -> list[tuple[str, str, float]]:
        """(service, command, seconds from submission to success) of the latest
        ``limit`` succeeded operations, newest first: what polls learn durations from."""
        with self._reading("the recent durations") as db:
            rows = db.execute(
                """SELECT i.service, i.command, o.finished_at - o.submitted_at
                   FROM operations o JOIN intents i ON i.spec_hash = o.spec_hash
                   WHERE o.status = 'succeeded' AND o.finished_at IS NOT NULL
                   ORDER BY o.finished_at DESC LIMIT ?""", (limit,)).fetchall()
            return [(r[0], r[1], float(r[2])) for r in rows]

    def latest_windows(self) -> dict[str, str]:
        """The latest window recorded per manifest name, history included (windows are
        ISO-8601 UTC texts, so the greatest is the latest)."""
        def read(db: sqlite3.Connection) -> dict[str, str]:
            rows = db.execute(
                "SELECT name, MAX(window) FROM intents WHERE window != '' GROUP BY name"
            ).fetchall()
            return {r[0]: r[1] for r in rows}

        return dict(self._memoized("windows", "the windows", read))

    def names(self) -> set[str]:
        def read(db: sqlite3.Connection) -> frozenset[str]:
            return frozenset(r[0] for r in db.execute("SELECT DISTINCT name FROM intents"))

        return set(self._memoized("names", "the manifest names", read))

    # ------------------------------------------------------------------ writes

    def save(self, step: Step) -> bool:
        """Persist one transition as given, in one transaction: the intent's record (or
        its removal) and its attempt's operation row. Nothing is decided here, but it is
        a compare-and-set: False (nothing written) when the stored record is no longer
        the version the step was computed from (another process moved it first)."""
        with self._lock:
            if not self._memo:  # nothing kept to carry the record into
                return self._save(step)
            before = self.generation()
            if not self._save(step):
                return False
            self._carry_reads(before, step)
            return True

    def _save(self, step: Step) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT version FROM intents WHERE spec_hash = ?",
                             (step.spec_hash,)).fetchone()
            if (row["version"] if row is not None else None) != step.expect_version:
                return False
            if step.drop_operation is not None:
                db.execute("DELETE FROM operations WHERE spec_hash = ? AND attempt = ?",
                           (step.spec_hash, step.drop_operation))
            if step.record is None:
                db.execute("DELETE FROM intents WHERE spec_hash = ?", (step.spec_hash,))
            else:
                _upsert(db, "intents", ("spec_hash",), _to_row(step.record))
            if step.new_operation is not None:
                _upsert(db, "operations", ("spec_hash", "attempt"),
                        _to_row(step.new_operation))
            if step.operation_change is not None:
                _update_operation(db, step.operation_change)
        return True

    def _carry_reads(self, before: tuple[int, int], step: Step) -> None:
        """After a save of this connection alone (no other commit in between), bring the
        reads kept from just before it up to date with the saved record instead of
        reading them again; what cannot be carried (a removal) is read again."""
        after = self.generation()
        # the record as reading it back gives it (JSON columns bounded, times as stored)
        rec = None if step.record is None else _from_row(IntentRecord, _to_row(step.record))
        for key, (generation, value) in list(self._memo.items()):
            if generation != before:
                continue  # out of date already
            carried = (None if rec is None or after[1] != before[1]
                       else _carried(key, value, rec))
            if carried is None:
                del self._memo[key]
            else:
                self._memo[key] = (after, carried)

    # ------------------------------------------------------------------ epochs

    def begin_epoch(self, *, reason: str, holder: str, now: datetime) -> Epoch:
        """Start a new epoch (a new or recovered store, or leadership gained): until its
        adoption pass is done, every desired intent is probed before anything is sent."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO epochs (started_at, reason, holder) VALUES (?, ?, ?)",
                (_ts(now), reason, holder))
            epoch_id = int(cursor.lastrowid or 0)
        return Epoch(epoch_id, now, reason, holder, None)

    def epoch(self) -> Epoch | None:
        """The latest epoch, or None for a store that never had one."""
        with self._reading("the epoch") as db:
            row = db.execute("SELECT * FROM epochs ORDER BY id DESC LIMIT 1").fetchone()
            return _from_row(Epoch, row) if row is not None else None

    def adopted(self, epoch: Epoch, *, now: datetime) -> Epoch:
        """Record that ``epoch``'s adoption pass probed every desired intent."""
        with self._tx() as db:
            db.execute("UPDATE epochs SET adopted_at = ? WHERE id = ?", (_ts(now), epoch.id))
        return replace(epoch, adopted_at=now)

    def epochs(self) -> list[Epoch]:
        """Every epoch, oldest first (``store copy``)."""
        with self._reading("the epochs") as db:
            rows = db.execute("SELECT * FROM epochs ORDER BY id").fetchall()
            return [_from_row(Epoch, r) for r in rows]

    def restore(self, intents: Iterable[IntentRecord], operations: Iterable[OperationRecord],
                epochs: Iterable[Epoch]) -> None:
        """Write whole records, as they are, into this empty store in one transaction
        (``store copy``, snapshots): StoreError, and nothing written, unless the store
        holds no intent, operation or epoch yet."""
        with self._tx() as db:
            held = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608
                    for t in ("intents", "operations", "epochs")]
            if any(held):
                raise StoreError(f"state store {self.path} is not empty ({held[0]} intents, "
                                 f"{held[1]} operations, {held[2]} epochs)")
            for rec in intents:
                _upsert(db, "intents", ("spec_hash",), _to_row(rec))
            for op in operations:
                _upsert(db, "operations", ("spec_hash", "attempt"), _to_row(op))
            for epoch in epochs:
                _upsert(db, "epochs", ("id",), _to_row(epoch))

    def prune(self) -> int:
        """Drop the oldest finished history beyond ``retention`` per manifest name."""
        with self._tx() as db:
            cursor = db.execute(
                """
                DELETE FROM intents WHERE spec_hash IN (
                    SELECT spec_hash FROM (
                        SELECT spec_hash, retired, status, ROW_NUMBER() OVER (
                            PARTITION BY name ORDER BY updated_at DESC) AS n
                        FROM intents
                    ) WHERE n > ? AND retired IS NOT NULL
                      AND status NOT IN ('submitting', 'pending'))
                """,
                (self.retention,),
            )
            return int(cursor.rowcount)
