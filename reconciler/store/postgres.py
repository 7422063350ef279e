"""State store: PostgreSQL, shared by replicas; the same tables, records and claims as SQLite.

``--state postgresql://user@host:5432/db`` (or ``postgres://``). psycopg 3 with a small
connection pool (1 to 4 connections), autocommit off, one transaction per public write.

- **Claims.** :meth:`PostgresStore.save` is the same compare-and-set as the SQLite store's:
  ``SELECT version … FOR UPDATE`` locks the intent's row, and the step is written only if
  the version is still the one it was computed from. An intent not yet recorded has no row
  to lock: the primary key decides, and an ``INSERT`` that conflicts with another claimer's
  means the claim was lost (False, nothing written).
- **Schema.** The SQLite schema (version 2) in PostgreSQL types: times are
  ``DOUBLE PRECISION`` UTC epoch seconds, JSON values sorted-key ``TEXT``, the texts that
  are sorted or compared (spec hash, name, window) ``COLLATE "C"`` (byte order, like
  SQLite's), so records read back are equal to those written, and equal across backends.
  Versioned migrations (the same two steps as SQLite's) are recorded in a
  ``schema_version`` table, one transaction each, serialised between replicas starting at
  once by a transaction-level advisory lock.
- **Credentials.** The password, in this order: the file named by ``password_file`` or,
  when that is not given, by the environment variable ``RECONCILER_STATE_PASSWORD_FILE``
  (its content, stripped; re-read for every new connection, so a rotated Secret is picked
  up); else the URL's own password; else libpq's defaults (``PGPASSWORD``, a ``passfile``
  URL parameter, ``~/.pgpass``). The URL is never logged nor put in an error message with
  its password: messages name ``postgresql://user@host:port/db`` (:attr:`PostgresDsn.display`).
- **Failures.** Every ``psycopg`` error becomes a :class:`~reconciler.errors.StoreError`
  naming the scrubbed URL and what to check. A lost connection (the server restarted) is
  replaced and the transaction run again, a few times: safe for a compare-and-set, whose
  second try writes nothing if the first one's commit did land. A transaction waits at
  most ``POOL_WAIT`` for a pooled connection, and once a connection could not be made at
  all (the server is down) only ``DOWN_POOL_WAIT``; then it tries one direct connection.
  So a caller (the daemon's event loop) learns at once that the server is still down, or
  is served as soon as it is back, without waiting out the pool's reconnection backoff.
- ``readonly=True`` runs every session with ``default_transaction_read_only = on``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import DictRow

from reconciler.errors import StoreError
from reconciler.model.lifecycle import Step
from reconciler.model.records import Epoch, IntentRecord, OperationRecord
from reconciler.store import pg_schema
from reconciler.store.pg_dsn import (
    ATTEMPTS,
    PASSWORD_FILE_ENV,
    Connection,
    PooledConnection,
    PostgresDsn,
    connect,
    is_lost,
    is_postgres_url,
    open_pool,
)
from reconciler.store.pg_queries import (
    INSERT_INTENT,
    RESTORE_EPOCH,
    RESTORE_INTENT,
    RESTORE_OPERATION,
    UPDATE_INTENT,
    UPSERT_OPERATION,
    update_operation,
)
from reconciler.store.pg_schema import MIGRATIONS as _MIGRATIONS  # read here, tests replace it
from reconciler.store.pg_schema import VERSION_TABLE as _VERSION_TABLE  # noqa: F401 - for tests
from reconciler.store.rows import from_row, to_row, to_timestamp
from reconciler.store.sqlite import SCHEMA_VERSION
from reconciler.store.sqlite import Store as SqliteStore

__all__ = [
    "PASSWORD_FILE_ENV",
    "SCHEMA_VERSION",
    "PostgresDsn",
    "PostgresStore",
    "is_postgres_url",
]

T = TypeVar("T")

#: seconds a transaction waits for a pooled connection before trying one direct
#: connection (the pool only lacks one when the server went away: its connections were
#: closed and it reconnects in the background, with backoff), and while the server is
#: known to be down
POOL_WAIT = 1.0
DOWN_POOL_WAIT = 0.2


# ---------------------------------------------------------------------------- the store


class PostgresStore:
    """The PostgreSQL state store. Thread-safe; every public write is one transaction."""

    shared = True

    def __init__(self, url: str, *, retention: int = 50, readonly: bool = False,
                 password_file: str | None = None, min_size: int = 1, max_size: int = 4,
                 timeout: float = 10.0, environ: Mapping[str, str] = os.environ) -> None:
        """Connect to (and, unless ``readonly``, migrate) the database at ``url``.

        ``retention``: finished, superseded or orphaned intents kept per manifest name.
        ``readonly``: never change it (``plan``, ``status``): StoreError unless its schema
        is this reconciler's. ``password_file``: see the module's docstring. ``timeout``:
        seconds to wait for a connection.
        """
        self.dsn = PostgresDsn.parse(url, password_file=password_file, environ=environ)
        self.retention = retention
        self.readonly = readonly
        self.timeout = timeout
        extra: dict[str, str | int | None] = {}
        if readonly:
            extra["options"] = "-c default_transaction_read_only=on"
        self._extra = extra
        try:
            # One direct connection first: its error is the one to show (a pool only
            # retries in the background), and it migrates before any pooled work.
            with connect(self.dsn, extra) as conn:
                if readonly:
                    self._check_version(conn)
                else:
                    self._migrate(conn)
        except psycopg.Error as exc:
            raise self.dsn.error("cannot open", exc) from None
        self._pool: psycopg_pool.ConnectionPool[PooledConnection] = open_pool(
            self.dsn, extra, min_size=min_size, max_size=max_size, timeout=timeout)
        #: False after a connection could not be made (the server is down): the next
        #: transactions do not wait for the pool (see :meth:`_run`)
        self._reachable = True

    @property
    def location(self) -> str:
        """The database, as shown: ``postgresql://user@host:port/db`` (no password)."""
        return self.dsn.display

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r})"

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, work: Callable[[Connection], T]) -> T:
        """``work`` in one transaction (committed unless it raised or rolled back), on a
        pooled connection; run again on a fresh one when the connection was lost.

        A pool with no connection to give within ``timeout`` (the server was down, and
        the pool waits between its reconnection attempts) is bypassed once: a direct
        connection either runs ``work`` (the server is back) or tells why it cannot."""
        delay = 0.1
        # The pool is given little time, and none to speak of while the server is known
        # to be down: a call fails (or, once the server is back, succeeds) at the speed
        # of one direct connection instead of blocking its caller (the daemon's event
        # loop) for the pool's whole timeout.
        wait = min(self.timeout, POOL_WAIT if self._reachable else DOWN_POOL_WAIT)
        for attempt in range(1, ATTEMPTS + 1):
            conn: Connection | None = None
            try:
                with self._pool.connection(timeout=wait) as conn:
                    result = work(conn)
                self._reachable = True
                return result
            except StoreError:
                raise
            except psycopg_pool.PoolTimeout:
                break
            except psycopg.Error as exc:
                if attempt < ATTEMPTS and is_lost(exc, conn):
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise self.dsn.error(what, exc) from None
        try:
            direct = connect(self.dsn, self._extra)
        except psycopg.Error as exc:
            self._reachable = False
            raise self.dsn.error(what, exc) from None
        try:
            with direct:
                return work(direct)
        except psycopg.Error as exc:
            raise self.dsn.error(what, exc) from None

    def ping(self) -> None:
        """Raise StoreError unless the server answers a query now (``/readyz``); while it
        is known to be down this costs one connection attempt, not the pool's timeout."""
        self._rows("SELECT 1 AS one")

    def _rows(self, query: str, params: Sequence[Any] = ()) -> list[DictRow]:
        return self._run("read", lambda conn: conn.execute(query, params).fetchall())

    @staticmethod
    def _version(conn: Connection) -> int:
        return pg_schema.schema_version(conn)

    def _check_version(self, conn: Connection) -> None:
        pg_schema.check_version(conn, self.location)

    def _migrate(self, conn: Connection) -> None:
        # _MIGRATIONS is looked up here, in this module, on every call (tests replace it)
        pg_schema.migrate(conn, self.location, _MIGRATIONS)

    @property
    def schema_version(self) -> int:
        return self._run("read the schema version", self._version)

    def check(self) -> None:
        """Raise StoreError unless the schema is this reconciler's and every operation
        belongs to a recorded intent."""
        version = self.schema_version
        if version != SCHEMA_VERSION:
            raise StoreError(f"state store {self.location} has schema version {version}, "
                             f"expected {SCHEMA_VERSION}")
        [row] = self._rows("SELECT COUNT(*) AS n FROM operations o LEFT JOIN intents i "
                           "ON i.spec_hash = o.spec_hash WHERE i.spec_hash IS NULL")
        if row["n"]:
            raise StoreError(f"state store {self.location} is inconsistent: {row['n']} "
                             "operations without their intent")

    # ------------------------------------------------------------------ reads

    def intents(self, *, include_retired: bool = False) -> dict[str, IntentRecord]:
        """Recorded intents by spec hash (by default only those not retired)."""
        query = "SELECT * FROM intents"
        if not include_retired:
            query += " WHERE retired IS NULL"
        rows = self._rows(query + " ORDER BY name, created_at")
        return {row["spec_hash"]: from_row(IntentRecord, row) for row in rows}

    def intent(self, spec_hash: str) -> IntentRecord | None:
        rows = self._rows("SELECT * FROM intents WHERE spec_hash = %s", (spec_hash,))
        return from_row(IntentRecord, rows[0]) if rows else None

    def intents_named(self, name: str) -> list[IntentRecord]:
        """Every intent of one manifest, oldest first (history included)."""
        rows = self._rows("SELECT * FROM intents WHERE name = %s ORDER BY created_at", (name,))
        return [from_row(IntentRecord, r) for r in rows]

    def latest_by_name(self) -> dict[str, IntentRecord]:
        """The most recently changed intent of every manifest name ever recorded."""
        rows = self._rows("SELECT * FROM intents ORDER BY name, updated_at, created_at")
        return {row["name"]: from_row(IntentRecord, row) for row in rows}

    def operations(self, *, name: str | None = None) -> list[OperationRecord]:
        """Operations (attempts), oldest first; optionally of one manifest."""
        if name is None:
            rows = self._rows("SELECT * FROM operations ORDER BY submitted_at, attempt, "
                              "spec_hash")
        else:
            rows = self._rows("SELECT * FROM operations WHERE name = %s "
                              "ORDER BY submitted_at, attempt, spec_hash", (name,))
        return [from_row(OperationRecord, r) for r in rows]

    def recent_durations(self, *, limit: int = 5000) -> list[tuple[str, str, float]]:
        """(service, command, seconds from submission to success) of the latest
        ``limit`` succeeded operations, newest first: what polls learn durations from."""
        rows = self._rows(
            "SELECT i.service, i.command, o.finished_at - o.submitted_at AS d "
            "FROM operations o JOIN intents i ON i.spec_hash = o.spec_hash "
            "WHERE o.status = 'succeeded' AND o.finished_at IS NOT NULL "
            "ORDER BY o.finished_at DESC LIMIT %s", (limit,))
        return [(r["service"], r["command"], float(r["d"])) for r in rows]

    def latest_windows(self) -> dict[str, str]:
        """The latest window recorded per manifest name, history included (windows are
        ISO-8601 UTC texts, so the greatest is the latest)."""
        rows = self._rows('SELECT name, MAX("window") AS w FROM intents '
                          "WHERE \"window\" != '' GROUP BY name")
        return {r["name"]: r["w"] for r in rows}

    def names(self) -> set[str]:
        return {r["name"] for r in self._rows("SELECT DISTINCT name FROM intents")}

    def generation(self) -> None:
        """Not known cheaply (other replicas write through their own connections)."""
        return None

    # ------------------------------------------------------------------ writes

    def save(self, step: Step) -> bool:
        """Persist one transition as given, in one transaction: the intent's record (or
        its removal) and its attempt's operation row. A compare-and-set: False (nothing
        written) when the stored record is no longer the version the step was computed
        from, or, for a new intent, when another process recorded it first."""

        def work(conn: Connection) -> bool:
            row = conn.execute("SELECT version FROM intents WHERE spec_hash = %s FOR UPDATE",
                               (step.spec_hash,)).fetchone()
            if (row["version"] if row is not None else None) != step.expect_version:
                conn.rollback()
                return False
            if step.drop_operation is not None:
                conn.execute("DELETE FROM operations WHERE spec_hash = %s AND attempt = %s",
                             (step.spec_hash, step.drop_operation))
            if step.record is None:
                conn.execute("DELETE FROM intents WHERE spec_hash = %s", (step.spec_hash,))
            elif row is None:
                inserted = conn.execute(INSERT_INTENT, to_row(step.record))
                if inserted.rowcount != 1:  # another claimer's row came first
                    conn.rollback()
                    return False
            else:
                conn.execute(UPDATE_INTENT, to_row(step.record))
            if step.new_operation is not None:
                conn.execute(UPSERT_OPERATION, to_row(step.new_operation))
            if step.operation_change is not None:
                update_operation(conn, step.operation_change)
            return True

        return self._run("save", work)

    def prune(self) -> int:
        """Drop the oldest finished history beyond ``retention`` per manifest name."""

        def work(conn: Connection) -> int:
            cursor = conn.execute(
                """
                DELETE FROM intents WHERE spec_hash IN (
                    SELECT spec_hash FROM (
                        SELECT spec_hash, retired, status, ROW_NUMBER() OVER (
                            PARTITION BY name ORDER BY updated_at DESC) AS n
                        FROM intents
                    ) AS ranked WHERE n > %s AND retired IS NOT NULL
                      AND status NOT IN ('submitting', 'pending'))
                """,
                (self.retention,))
            return int(cursor.rowcount)

        return self._run("prune", work)

    # ------------------------------------------------------------------ epochs

    def begin_epoch(self, *, reason: str, holder: str, now: datetime) -> Epoch:
        """Start a new epoch (a new or recovered store, or leadership gained)."""

        def work(conn: Connection) -> int:
            row = conn.execute("INSERT INTO epochs (started_at, reason, holder) "
                               "VALUES (%s, %s, %s) RETURNING id",
                               (to_timestamp(now), reason, holder)).fetchone()
            assert row is not None
            return int(row["id"])

        return Epoch(self._run("begin an epoch", work), now, reason, holder, None)

    def epoch(self) -> Epoch | None:
        """The latest epoch, or None for a store that never had one."""
        rows = self._rows("SELECT * FROM epochs ORDER BY id DESC LIMIT 1")
        return from_row(Epoch, rows[0]) if rows else None

    def adopted(self, epoch: Epoch, *, now: datetime) -> Epoch:
        """Record that ``epoch``'s adoption pass probed every desired intent."""
        self._run("record an adoption", lambda conn: conn.execute(
            "UPDATE epochs SET adopted_at = %s WHERE id = %s", (to_timestamp(now), epoch.id)))
        return replace(epoch, adopted_at=now)

    def epochs(self) -> list[Epoch]:
        """Every epoch, oldest first (``store copy``)."""
        return [from_row(Epoch, r) for r in self._rows("SELECT * FROM epochs ORDER BY id")]

    # ------------------------------------------------------------------ whole store

    def restore(self, intents: Iterable[IntentRecord], operations: Iterable[OperationRecord],
                epochs: Iterable[Epoch]) -> None:
        """Write whole records, as they are, into this empty store in one transaction
        (``store copy``): StoreError, and nothing written, unless it holds no intent,
        operation or epoch yet. The tables are locked against writers meanwhile."""
        intent_rows = [to_row(r) for r in intents]
        operation_rows = [to_row(o) for o in operations]
        epoch_rows = [to_row(e) for e in epochs]

        def work(conn: Connection) -> None:
            conn.execute("LOCK TABLE intents, operations, epochs IN EXCLUSIVE MODE")
            row = conn.execute("SELECT (SELECT COUNT(*) FROM intents) AS i, "
                               "(SELECT COUNT(*) FROM operations) AS o, "
                               "(SELECT COUNT(*) FROM epochs) AS e").fetchone()
            assert row is not None
            if row["i"] or row["o"] or row["e"]:
                conn.rollback()
                raise StoreError(f"state store {self.location} is not empty ({row['i']} "
                                 f"intents, {row['o']} operations, {row['e']} epochs)")
            with conn.cursor() as cursor:
                for query, rows in ((RESTORE_INTENT, intent_rows),
                                    (RESTORE_OPERATION, operation_rows),
                                    (RESTORE_EPOCH, epoch_rows)):
                    if rows:
                        cursor.executemany(query, rows)
            conn.execute("SELECT setval(pg_get_serial_sequence('epochs', 'id'), "
                         "COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM epochs")

        self._run("restore", work)

    def _dump(self) -> tuple[list[IntentRecord], list[OperationRecord], list[Epoch]]:
        """Every record, read in one repeatable-read transaction (one consistent view)."""

        def work(conn: Connection) -> tuple[list[DictRow], list[DictRow], list[DictRow]]:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return (conn.execute("SELECT * FROM intents ORDER BY name, created_at").fetchall(),
                    conn.execute("SELECT * FROM operations "
                                 "ORDER BY submitted_at, attempt, spec_hash").fetchall(),
                    conn.execute("SELECT * FROM epochs ORDER BY id").fetchall())

        intents, operations, epochs = self._run("read", work)
        return ([from_row(IntentRecord, r) for r in intents],
                [from_row(OperationRecord, r) for r in operations],
                [from_row(Epoch, r) for r in epochs])

    def snapshot(self) -> SqliteStore:
        """An in-memory SQLite copy of this store: changing it never touches the database
        (``plan --api-url`` runs the engine's probes against it)."""
        copy = SqliteStore(":memory:", retention=self.retention)
        copy.restore(*self._dump())
        return copy

