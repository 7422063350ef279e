"""The check of the state store: it opens and is writable, and nothing is created or
migrated (a new store's folder is proven writable by a temporary file, removed at once)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from reconciler.cli.checks import HINT_STORE, Check, failing, passing, uid
from reconciler.errors import StoreError
from reconciler.store import SCHEMA_VERSION, open_store, recovery_hint, sqlite_path

__all__ = ["safe_location", "store_check"]


def safe_location(location: str) -> str:
    """A ``--state`` value fit for logs: a URL without its password."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, parts.query, ""))



def _writable(directory: Path) -> bool:
    """Whether this process may create files in ``directory``: its mode says so and a
    temporary file can really be made there (and is removed at once), so a read-only
    file system or a refusing ACL is found even for root, whom modes do not stop."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".reconciler-check-"):
            pass
    except OSError:
        return False
    return True


def _refusal(path: Path) -> str:
    """Why ``path`` cannot be written: a read-only file system, or the permissions."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        read_only = False
    if read_only:
        return "is not writable: it is on a read-only file system"
    return f"is not writable by {uid()} (permission denied)"


def store_check(location: str) -> Check:
    """The state store opens and is writable; nothing is created or migrated (a new
    store's folder is proven writable with a temporary file, removed at once)."""
    try:
        path = sqlite_path(location)
    except StoreError as exc:
        return failing("store", str(exc), HINT_STORE, fatal=True)
    if path is None:
        return _postgres_check(location)
    if path == ":memory:":
        return passing("store", "in memory: nothing is kept across restarts")
    file = Path(path)
    if file.exists():
        return _existing_store(file)
    ancestor = file.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return failing("store", f"cannot create {file}: {ancestor} is a file, not a "
                     "directory", HINT_STORE, fatal=True)
    if not _writable(ancestor):
        missing = (f"the state directory {file.parent} does not exist and "
                   if ancestor != file.parent else "")
        return failing("store", f"cannot create {file}: {missing}{ancestor} "
                     f"{_refusal(ancestor)}", HINT_STORE, fatal=True)
    made = "" if ancestor == file.parent else f" (and the directory {file.parent})"
    return passing("store", f"{file} does not exist yet; the daemon creates it{made}, and "
                 f"{ancestor} is writable")


def _existing_store(file: Path) -> Check:
    if file.is_dir():
        return failing("store", f"{file} is a directory, not a SQLite file",
                     "give --state the path of a file, e.g. /data/reconciler-state.db",
                     fatal=True)
    if not os.access(file, os.R_OK | os.W_OK):
        return failing("store", f"{file} {_refusal(file)}", HINT_STORE, fatal=True)
    if not _writable(file.parent):
        return failing("store", f"{file.parent} {_refusal(file.parent)}: SQLite writes "
                     f"{file.name}-wal and {file.name}-shm beside the database",
                     HINT_STORE, fatal=True)
    try:
        db = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            intents = (int(db.execute("SELECT count(*) FROM intents").fetchone()[0])
                       if version else 0)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return failing("store", f"cannot read {file}: {exc}",
                     f"is it a reconciler state store? If it is, {recovery_hint(str(file))}",
                     fatal=True)
    if version > SCHEMA_VERSION:
        return failing("store", f"{file} has schema version {version}, newer than this "
                     f"reconciler's {SCHEMA_VERSION}", "upgrade the reconciler", fatal=True)
    later = (f"; the daemon migrates it from version {version} to {SCHEMA_VERSION}"
             if version < SCHEMA_VERSION else "")
    return passing("store", f"{file} is writable: {intents} intent(s) recorded{later}")


def _postgres_check(location: str) -> Check:
    try:
        with open_store(location, readonly=True) as store:
            intents = len(store.intents(include_retired=True))
    except StoreError as exc:
        if "schema version 0" in str(exc):
            return passing("store", f"{safe_location(location)} answers, an empty database: the "
                         "daemon creates its schema")
        return failing("store", str(exc), "check --state (RECONCILER_STATE), the server, and "
                     "RECONCILER_STATE_PASSWORD_FILE", fatal=True)
    return passing("store", f"{safe_location(location)} answers: {intents} intent(s) recorded "
                 "(writes are not tried)")
