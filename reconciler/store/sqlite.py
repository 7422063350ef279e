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
from pathlib import Path
from typing import Any, Literal, TypeVar

from reconciler.errors import StoreError
from reconciler.model.records import IntentRecord, NewIntent, OperationRecord

__all__ = ["SCHEMA_VERSION", "Store"]

SCHEMA_VERSION = 1


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
        else:
            values[f.name] = raw
    return cls(**values)


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

    # ------------------------------------------------------------------ transitions

    def begin_attempt(
        self,
        intent: NewIntent,
        *,
        attempt: int,
        operation_id: str,
        service_id: str | None,
        now: datetime,
        revision: str,
    ) -> None:
        """Write-ahead: record attempt ``attempt`` as ``submitting`` before its POST."""
        t = _ts(now)
        with self._tx() as db:
            db.execute(
                """
                INSERT INTO intents (spec_hash, name, service, command, window, canonical,
                    status, attempts, operation_id, service_id, first_submitted_at,
                    attempt_started_at, next_poll_at, poll_count, revision, created_at,
                    updated_at)
                VALUES (?, ?, ?, ?, ?, ?, 'submitting', ?, ?, ?, ?, ?, NULL, 0, ?, ?, ?)
                ON CONFLICT(spec_hash) DO UPDATE SET
                    status = 'submitting', attempts = excluded.attempts,
                    operation_id = excluded.operation_id, service_id = excluded.service_id,
                    first_submitted_at = COALESCE(intents.first_submitted_at,
                                                  excluded.first_submitted_at),
                    attempt_started_at = excluded.attempt_started_at,
                    next_attempt_at = NULL, next_poll_at = NULL, poll_count = 0,
                    revision = excluded.revision, updated_at = excluded.updated_at,
                    retired = NULL
                """,
                (intent.spec_hash, intent.name, intent.service, intent.command, intent.window,
                 intent.canonical, attempt + 1, operation_id, service_id, t, t, revision, t, t),
            )
            db.execute(
                """
                INSERT INTO operations (operation_id, spec_hash, name, attempt, service_id,
                    submitted_at, status, revision)
                VALUES (?, ?, ?, ?, ?, ?, 'submitting', ?)
                ON CONFLICT(operation_id) DO UPDATE SET status = 'submitting',
                    submitted_at = excluded.submitted_at
                """,
                (operation_id, intent.spec_hash, intent.name, attempt, service_id, t, revision),
            )

    def defer(self, spec_hash: str, *, now: datetime, next_poll_at: datetime,
              error: Mapping[str, Any] | None = None, unsent: bool = False) -> None:
        """An in-flight intent could not be checked now (transient error): look again
        later. ``unsent``: the server certainly did not take the attempt's run request
        (it answered 429 or 401, or the connection was refused), so a later 404 needs no
        waiting; recorded by clearing ``attempt_started_at``."""
        with self._tx() as db:
            db.execute(
                """UPDATE intents SET next_poll_at = ?, poll_count = poll_count + 1,
                   last_error = COALESCE(?, last_error), updated_at = ?,
                   attempt_started_at = CASE WHEN ? THEN NULL ELSE attempt_started_at END
                   WHERE spec_hash = ?""",
                (_ts(next_poll_at), _json(error), _ts(now), unsent, spec_hash),
            )

    def mark_pending(
        self, spec_hash: str, *, operation_id: str, sent_operation_id: str, now: datetime,
        next_poll_at: datetime, poll_count: int = 0,
    ) -> None:
        """The server accepted (or we found) the operation; it is running. The id the
        server answered with is the one recorded and polled from now on."""
        with self._tx() as db:
            db.execute(
                """UPDATE intents SET status = 'pending', operation_id = ?, next_poll_at = ?,
                   poll_count = ?, last_error = NULL, updated_at = ? WHERE spec_hash = ?""",
                (operation_id, _ts(next_poll_at), poll_count, _ts(now), spec_hash),
            )
            db.execute(
                """UPDATE operations SET status = 'pending', operation_id = ?
                   WHERE operation_id = ?""",
                (operation_id, sent_operation_id),
            )

    def mark_succeeded(
        self, spec_hash: str, *, operation_id: str, now: datetime,
        result: Mapping[str, Any] | None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                """UPDATE intents SET status = 'succeeded', operation_id = ?,
                   next_poll_at = NULL, next_attempt_at = NULL, last_error = NULL,
                   succeeded_at = ?, updated_at = ? WHERE spec_hash = ?""",
                (operation_id, _ts(now), _ts(now), spec_hash),
            )
            db.execute(
                """UPDATE operations SET status = 'succeeded', finished_at = ?, result = ?
                   WHERE operation_id = ?""",
                (_ts(now), _json(result), operation_id),
            )

    def mark_failed(
        self,
        spec_hash: str,
        *,
        operation_id: str | None,
        now: datetime,
        error: Mapping[str, Any],
        next_attempt_at: datetime | None,
        outcome: Literal["failed", "timed_out"] = "failed",
    ) -> None:
        """The attempt failed: retry at ``next_attempt_at``, or stall when it is None."""
        status = "failed" if next_attempt_at is not None else "stalled"
        with self._tx() as db:
            db.execute(
                """UPDATE intents SET status = ?, next_attempt_at = ?, next_poll_at = NULL,
                   last_error = ?, updated_at = ? WHERE spec_hash = ?""",
                (status, _ts(next_attempt_at), _json(error), _ts(now), spec_hash),
            )
            if operation_id is not None:
                db.execute(
                    """UPDATE operations SET status = ?, finished_at = ?, error = ?
                       WHERE operation_id = ?""",
                    (outcome, _ts(now), _json(error), operation_id),
                )

    def record_stalled(self, intent: NewIntent, *, now: datetime, error: Mapping[str, Any],
                       revision: str) -> None:
        """An intent that cannot even be submitted (e.g. its service does not exist)."""
        t = _ts(now)
        with self._tx() as db:
            db.execute(
                """
                INSERT INTO intents (spec_hash, name, service, command, window, canonical,
                    status, attempts, last_error, revision, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, 'stalled', 0, ?, ?, ?, ?)
                ON CONFLICT(spec_hash) DO UPDATE SET status = 'stalled',
                    last_error = excluded.last_error, next_attempt_at = NULL,
                    updated_at = excluded.updated_at
                """,
                (intent.spec_hash, intent.name, intent.service, intent.command, intent.window,
                 intent.canonical, _json(error), revision, t, t),
            )

    def forget_attempt(self, spec_hash: str, *, operation_id: str, now: datetime) -> None:
        """A write-ahead attempt that never reached the server (lookup said 404) and must
        not be sent now: drop it, so the intent reads as not submitted."""
        with self._tx() as db:
            db.execute("DELETE FROM operations WHERE operation_id = ?", (operation_id,))
            row = db.execute(
                "SELECT attempts FROM intents WHERE spec_hash = ?", (spec_hash,)
            ).fetchone()
            if row is None:
                return
            if row["attempts"] <= 1:
                db.execute("DELETE FROM intents WHERE spec_hash = ?", (spec_hash,))
            else:
                db.execute(
                    """UPDATE intents SET status = 'failed', attempts = attempts - 1,
                       next_attempt_at = ?, updated_at = ? WHERE spec_hash = ?""",
                    (_ts(now), _ts(now), spec_hash),
                )

    def retire(self, spec_hash: str, *, why: Literal["orphaned", "superseded"],
               now: datetime) -> None:
        """The manifest was removed (orphaned) or changed (superseded): keep as history."""
        with self._tx() as db:
            db.execute(
                "UPDATE intents SET retired = ?, updated_at = ? WHERE spec_hash = ?",
                (why, _ts(now), spec_hash),
            )

    def retry(self, name: str, *, now: datetime) -> list[str]:
        """Give stalled or failed intents of ``name`` a fresh retry budget and deadline,
        due now. Returns the spec hashes changed (empty: nothing to retry)."""
        with self._tx() as db:
            rows = db.execute(
                """SELECT spec_hash FROM intents WHERE name = ? AND retired IS NULL
                   AND status IN ('stalled', 'failed')""",
                (name,),
            ).fetchall()
            hashes = [r["spec_hash"] for r in rows]
            for h in hashes:
                db.execute(
                    """UPDATE intents SET status = 'failed', retry_base = attempts,
                       first_submitted_at = NULL, next_attempt_at = ?, updated_at = ?
                       WHERE spec_hash = ?""",
                    (_ts(now), _ts(now), h),
                )
        return hashes

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
