"""The SQLite state store's schema and plumbing: the migrations, opening a file (its
directory checked, read-write in WAL or read-only), the errors a failed SQLite call becomes.

Split out of :mod:`reconciler.store.sqlite`, which keeps the
:class:`~reconciler.store.sqlite.Store` and re-exports the names here.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from reconciler.errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "CorruptStoreError", "migrate", "open_database",
           "open_error", "prepare", "readonly_uri", "recovery_hint", "store_error", "wal",
           "writable_directory"]

SCHEMA_VERSION = 2


MIGRATIONS: Sequence[str] = (
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
    ALTER TABLE intents ADD COLUMN accepted_at REAL;
    ALTER TABLE intents ADD COLUMN missing_since REAL;
    ALTER TABLE intents ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    UPDATE intents SET accepted_at = updated_at WHERE status IN ('pending', 'in_sync');
    CREATE TABLE epochs (
        id          INTEGER PRIMARY KEY,
        started_at  REAL NOT NULL,
        reason      TEXT NOT NULL,
        holder      TEXT NOT NULL,
        adopted_at  REAL
    );
    """,
)


class CorruptStoreError(StoreError):
    """The SQLite file is damaged (or is not a state store): its message names the file
    and the recovery (``reconciler store recover``)."""


#: what a damaged file says through SQLite
_CORRUPT = ("malformed", "not a database", "corrupt", "encrypted",
            "no such table", "no such column", "file is too small")


def recovery_hint(path: str) -> str:
    """How to recover from a damaged store at ``path``."""
    return (f"stop the daemon and run `reconciler store recover --state {path}`: it moves "
            "the damaged file aside, and the next start rebuilds the store by looking every "
            "manifest up on the server before sending anything (nothing runs twice)")


def store_error(path: str, exc: BaseException, doing: str) -> StoreError:
    """One clear error for a failed SQLite call: the file, what was being done, what went
    wrong, and what to do about it."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if isinstance(exc, ValueError | TypeError | KeyError) or any(w in low for w in _CORRUPT):
        return CorruptStoreError(f"state store {path} is damaged ({doing}: {text}); "
                                 + recovery_hint(path))
    if "readonly" in low or "read-only" in low:
        hint = ("it is opened read-only, or the file or its directory is not writable by "
                "this user (a read-only mount?)")
    elif "locked" in low or "busy" in low:
        hint = "another process holds it (a second daemon on the same file?)"
    elif "disk is full" in low or "disk i/o" in low:
        hint = "check the volume holding it (full, failing or unmounted?)"
    elif "unable to open" in low:
        hint = "check that the file and its directory exist and are readable"
    else:
        hint = f"`reconciler store check --state {path}` tells whether the file is damaged"
    return StoreError(f"state store {path}: cannot {doing}: {text}; {hint}")


def writable_directory(path: Path) -> None:
    """Create ``path``'s directory if needed; StoreError unless the file can be written."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the state directory {parent} for the state store {path}: "
            f"{exc.strerror or exc}; point --state (RECONCILER_STATE) at a writable "
            "directory (a mounted volume)") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(
            f"the state directory {parent} is not writable by this user (uid "
            f"{os.getuid()}), and SQLite needs to create {path.name}-wal and "
            f"{path.name}-shm beside the state store: make it writable, or point --state "
            "(RECONCILER_STATE) at a writable directory; `status` and `plan` only read")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"the state store {path} is not readable and writable by this user "
                         f"(uid {os.getuid()}); fix its owner or mode")


def readonly_uri(path: Path) -> tuple[str, str]:
    """How to open an existing store without changing anything: the URI and its mode.

    ``mode=ro`` when the store has a ``-wal`` file with content (a daemon has it open, or
    stopped without folding it in): only then does SQLite need the ``-wal``/``-shm`` files,
    and they are there already. Otherwise everything is in the file itself, and it is read
    ``immutable=1``: no lock, no ``-wal``/``-shm`` file created, so it works on a
    read-only mount too. (A daemon starting meanwhile writes its changes into a ``-wal``
    file this reader does not look at: it sees the store as it was when it opened.)
    """
    base = path.resolve().as_uri()
    wal = Path(f"{path}-wal")
    try:
        live = wal.stat().st_size > 0
    except OSError:
        live = False
    if live:
        return base + "?mode=ro", "ro"
    return base + "?immutable=1", "immutable"



def open_error(path: str, mode: str | None, exc: sqlite3.DatabaseError) -> StoreError:
    """The error for a store at ``path`` that could not be opened (``mode``: how a
    read-only store was being opened, None read-write)."""
    name = Path(path).name
    if mode == "ro" and "unable to open" in str(exc):
        return StoreError(
            f"cannot open state store {path} read-only: its changes in {name}-wal "
            f"are not folded into it yet, and SQLite cannot share them here ({exc}: a "
            f"read-only directory without {name}-shm?); copy the files to a writable "
            "directory, or stop the daemon cleanly first (it folds the -wal file in)")
    error = store_error(path, exc, "open it")
    if isinstance(error, CorruptStoreError):
        return CorruptStoreError(f"cannot open state store {path}: it is damaged "
                                 f"({exc}); " + recovery_hint(path))
    return StoreError(f"cannot open state store {path}: {exc}; "
                      + str(error).rsplit("; ", 1)[-1])


def open_database(path: str, *, readonly: bool) -> tuple[sqlite3.Connection, str | None]:
    """Connect to the store at ``path`` (``":memory:"`` for tests): the connection, and
    how a read-only store was opened ("ro" or "immutable"; None: read-write). A writable
    store's directory is checked (and created) first; see :func:`readonly_uri`."""
    memory = path == ":memory:"
    file = Path(path)
    mode: str | None = None
    if readonly and not memory and not file.is_file():
        raise StoreError(f"no state store at {path}")
    if not readonly and not memory:
        writable_directory(file)
    try:
        if readonly and not memory:
            uri, mode = readonly_uri(file)
            db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                 check_same_thread=False, timeout=30.0)
        else:
            db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
    except sqlite3.DatabaseError as exc:
        raise open_error(path, mode, exc) from None
    return db, mode


def prepare(db: sqlite3.Connection, path: str, mode: str | None, *, readonly: bool,
            upgrade: Callable[[], None]) -> None:
    """Make a new connection ready: a read-only store must have this schema version; a
    writable one is switched to WAL, synchronous, with foreign keys, then ``upgrade`` (the
    migrations) is called. The connection is closed when this fails."""
    try:
        db.row_factory = sqlite3.Row
        if readonly:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"state store {path} has schema version {version}; this "
                    f"reconciler reads version {SCHEMA_VERSION} (run the daemon once "
                    "to migrate it)")
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        else:
            wal(db)
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            upgrade()
    except StoreError:
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        raise open_error(path, mode, exc) from None


def wal(db: sqlite3.Connection) -> None:
    """Switch to WAL. SQLite answers "locked" at once, without its busy timeout, while
    another process creates the same new store: wait for it a little."""
    for _ in range(100):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    db.execute("PRAGMA journal_mode=WAL")


def migrate(db: sqlite3.Connection, path: str, *,
            tx: Callable[[], AbstractContextManager[sqlite3.Connection]],
            migrations: Sequence[str]) -> None:
    """Bring the schema of ``db`` up to :data:`SCHEMA_VERSION` with ``migrations``
    (version N is ``migrations[N - 1]``), each version in one transaction ``tx``."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"state store {path} has schema version {version}, newer than this "
            f"reconciler understands ({SCHEMA_VERSION}); upgrade the reconciler"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with tx() as conn:
            # another process may have migrated since the version above was read
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= target:
                continue
            for statement in migrations[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
