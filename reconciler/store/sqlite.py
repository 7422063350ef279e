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

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from reconciler.errors import StoreError
from reconciler.model.lifecycle import OperationChange, Step
from reconciler.model.records import IntentRecord, OperationRecord
from reconciler.model.states import IntentState, OperationStatus

__all__ = ["SCHEMA_VERSION", "Store"]

SCHEMA_VERSION = 2


_MIGRATIONS: Sequence[str] = (
    # version 1
    """
    CREATE TABLE intents (
        spec_hash          TEXT PRIMARY KEY,
        name               TEXT NOT NULL,
        service            TEXT NOT NULL,
        command            TEXT NOT NULL,
        window             TEXT NOT NULL DEFAULT '',
        canonical          TEXT NOT NULL,
        status             TEXT NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        retry_base         INTEGER NOT NULL DEFAULT 0,
        operation_id       TEXT,
        service_id         TEXT,
        first_submitted_at REAL,
        attempt_started_at REAL,
        next_attempt_at    REAL,
        next_poll_at       REAL,
        poll_count         INTEGER NOT NULL DEFAULT 0,
        last_error         TEXT,
        retired            TEXT,
        revision           TEXT NOT NULL DEFAULT '',
        created_at         REAL NOT NULL,
        updated_at         REAL NOT NULL,
        succeeded_at       REAL
    );
    CREATE INDEX intents_by_name ON intents(name, updated_at);
    CREATE TABLE operations (
        operation_id  TEXT PRIMARY KEY,
        spec_hash     TEXT NOT NULL REFERENCES intents(spec_hash) ON DELETE CASCADE,
        name          TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        service_id    TEXT,
        submitted_at  REAL NOT NULL,
        finished_at   REAL,
        status        TEXT NOT NULL,
        error         TEXT,
        result        TEXT,
        revision      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX operations_by_name ON operations(name, submitted_at);
    CREATE INDEX operations_by_intent ON operations(spec_hash, attempt);
    """,
    # version 2: one operation row per (intent, attempt), whatever id the server gave it;
    # the recorded success of an intent is named as everywhere else, in_sync
    """
    CREATE TABLE operations_v2 (
        spec_hash     TEXT NOT NULL REFERENCES intents(spec_hash) ON DELETE CASCADE,
        attempt       INTEGER NOT NULL,
        operation_id  TEXT NOT NULL,
        name          TEXT NOT NULL,
        service_id    TEXT,
        submitted_at  REAL NOT NULL,
        finished_at   REAL,
        status        TEXT NOT NULL,
        error         TEXT,
        result        TEXT,
        revision      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (spec_hash, attempt)
    );
    INSERT OR REPLACE INTO operations_v2 (spec_hash, attempt, operation_id, name, service_id,
        submitted_at, finished_at, status, error, result, revision)
        SELECT spec_hash, attempt, operation_id, name, service_id, submitted_at, finished_at,
               status, error, result, revision FROM operations ORDER BY submitted_at;
    DROP TABLE operations;
    ALTER TABLE operations_v2 RENAME TO operations;
    CREATE INDEX operations_by_name ON operations(name, submitted_at);
    CREATE INDEX operations_by_id ON operations(operation_id);
    UPDATE intents SET status = 'in_sync' WHERE status = 'succeeded';
    """,
)


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _dt(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _json(value: Mapping[str, Any] | None) -> str | None:
    return json.dumps(value, sort_keys=True) if value is not None else None


def _unjson(text: str | None) -> Any:
    return json.loads(text) if text else None


_TIME_COLUMNS = frozenset({
    "first_submitted_at", "attempt_started_at", "next_attempt_at", "next_poll_at",
    "created_at", "updated_at", "succeeded_at", "submitted_at", "finished_at",
})
_JSON_COLUMNS = frozenset({"last_error", "error", "result"})
_Record = TypeVar("_Record", IntentRecord, OperationRecord)


def _from_row(cls: type[_Record], row: sqlite3.Row) -> _Record:
    """A record from a row: epoch columns become UTC datetimes, JSON columns objects."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = row[f.name]
        if f.name in _TIME_COLUMNS:
            values[f.name] = _dt(raw)
        elif f.name in _JSON_COLUMNS:
            values[f.name] = _unjson(raw)
        elif f.name == "status":
            values[f.name] = IntentState(raw) if cls is IntentRecord else OperationStatus(raw)
        else:
            values[f.name] = raw
    return cls(**values)


def _to_row(record: IntentRecord | OperationRecord) -> dict[str, Any]:
    """A record as column values: datetimes to epoch seconds, mappings to JSON."""
    row: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name in _TIME_COLUMNS:
            row[f.name] = _ts(value)
        elif f.name in _JSON_COLUMNS:
            row[f.name] = _json(value)
        elif isinstance(value, StrEnum):
            row[f.name] = str(value)
        else:
            row[f.name] = value
    return row


def _upsert(db: sqlite3.Connection, table: str, key: Sequence[str],
            row: Mapping[str, Any]) -> None:
    columns = ", ".join(row)
    marks = ", ".join(f":{c}" for c in row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in row if c not in key)
    db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608 - fixed names
               f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {updates}", row)


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
    """The SQLite state store. Thread-safe; every public write is one transaction."""

    def __init__(self, path: str | Path, *, retention: int = 50, readonly: bool = False) -> None:
        """Open (creating and migrating) the store at ``path``; ``":memory:"`` for tests.

        ``retention``: finished, superseded or orphaned intents kept per manifest name.
        ``readonly``: open an existing store without changing it (``plan``, ``status``).
        """
        self.path = str(path)
        self.retention = retention
        self._lock = threading.RLock()
        try:
            if readonly:
                uri = Path(self.path).resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                           check_same_thread=False, timeout=30.0)
            else:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
            self._db.row_factory = sqlite3.Row
            if readonly:
                version = self.schema_version
                if version != SCHEMA_VERSION:
                    raise StoreError(
                        f"state store {self.path} has schema version {version}; this "
                        f"reconciler reads version {SCHEMA_VERSION} (run the daemon once "
                        "to migrate it)")
            else:
                self._wal()
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open state store {self.path}: {exc}") from exc

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
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"state store {self.path}: {exc}") from exc

    def _wal(self) -> None:
        """Switch to WAL. SQLite answers "locked" at once, without its busy timeout, while
        another process creates the same new store: wait for it a little."""
        for _ in range(100):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA journal_mode=WAL")

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state store {self.path} has schema version {version}, newer than this "
                f"reconciler understands ({SCHEMA_VERSION}); upgrade the reconciler"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as db:
                # another process may have migrated since the version above was read
                if int(db.execute("PRAGMA user_version").fetchone()[0]) >= target:
                    continue
                for statement in _MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")

    def snapshot(self) -> Store:
        """An in-memory copy of this store: changing it never touches the original."""
        copy = Store(":memory:", retention=self.retention)
        with self._lock:
            self._db.backup(copy._db)
        return copy

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def check(self) -> None:
        """Raise StoreError unless SQLite's integrity check passes."""
        with self._lock:
            result = self._db.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise StoreError(f"state store {self.path} is corrupt: {result}")

    # ------------------------------------------------------------------ reads

    @staticmethod
    def _intent(row: sqlite3.Row) -> IntentRecord:
        return _from_row(IntentRecord, row)

    @staticmethod
    def _operation(row: sqlite3.Row) -> OperationRecord:
        return _from_row(OperationRecord, row)

    def intents(self, *, include_retired: bool = False) -> dict[str, IntentRecord]:
        """Recorded intents by spec hash (by default only those not retired)."""
        query = "SELECT * FROM intents"
        if not include_retired:
            query += " WHERE retired IS NULL"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY name, created_at").fetchall()
        return {row["spec_hash"]: self._intent(row) for row in rows}

    def intent(self, spec_hash: str) -> IntentRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM intents WHERE spec_hash = ?", (spec_hash,)
            ).fetchone()
        return self._intent(row) if row else None

    def intents_named(self, name: str) -> list[IntentRecord]:
        """Every intent of one manifest, oldest first (history included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM intents WHERE name = ? ORDER BY created_at", (name,)
            ).fetchall()
        return [self._intent(r) for r in rows]

    def latest_by_name(self) -> dict[str, IntentRecord]:
        """The most recently changed intent of every manifest name ever recorded."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM intents ORDER BY name, updated_at, created_at"
            ).fetchall()
        return {row["name"]: self._intent(row) for row in rows}

    def operations(self, *, name: str | None = None) -> list[OperationRecord]:
        """Operations (attempts), oldest first; optionally of one manifest."""
        query, params = "SELECT * FROM operations", ()
        if name is not None:
            query, params = query + " WHERE name = ?", (name,)  # type: ignore[assignment]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY submitted_at, attempt", params).fetchall()
        return [self._operation(r) for r in rows]

    def names(self) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT name FROM intents").fetchall()
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ writes

    def save(self, step: Step) -> None:
        """Persist one transition as given, in one transaction: the intent's record (or
        its removal) and its attempt's operation row. Nothing is decided here."""
        with self._tx() as db:
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
