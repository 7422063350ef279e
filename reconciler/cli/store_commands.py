"""``reconciler store check|recover|copy``: look after the state store itself.

- ``check``: SQLite's ``PRAGMA integrity_check`` (``--quick``: ``quick_check``, what the
  daemon runs at every start), read-only, so it works on a read-only mount and beside a
  running daemon; PostgreSQL: the schema version and that every operation has its intent.
  Exit 0 whole, 1 damaged (the message says how to recover).
- ``recover``: a damaged SQLite store is moved aside (``PATH.damaged-<UTC time>``, its
  ``-wal``/``-shm`` files with it) and an empty one created in its place. Nothing is
  re-run: a fresh store has no epoch, so the daemon's next start begins one, and its
  adoption pass looks every manifest's operations up on the server (recording what already
  ran) before anything is sent. Refused while another process has the file open, and for a
  store that is whole (unless ``--force``).
- ``copy --from SRC --to DST``: every record of one store into an empty other (PostgreSQL
  and SQLite either way, :func:`reconciler.store.copy.copy_store`); the source is opened
  read-only.

Locations are ``--state`` values (:func:`reconciler.store.open_store`); every message names
them scrubbed (a PostgreSQL URL without its password).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from reconciler.errors import StoreError
from reconciler.model import scrub
from reconciler.store import StateStore, Store, is_postgres_url, open_store, sqlite_path
from reconciler.store.copy import copy_store

__all__ = ["cmd_check", "cmd_copy", "cmd_recover", "in_use", "register", "shown"]

EXIT_OK, EXIT_FAILED = 0, 1


def shown(location: str) -> str:
    """``location`` as it may be shown: a PostgreSQL URL without its password, scrubbed."""
    if is_postgres_url(location):
        from reconciler.store.pg_dsn import PostgresDsn  # psycopg: only for PostgreSQL

        try:
            return PostgresDsn.parse(location).display
        except StoreError:
            return "postgresql://…"
    return scrub.text(location)


def _state_default() -> str:
    return os.environ.get("RECONCILER_STATE", "./reconciler-state.db")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store`` (``check``, ``recover``, ``copy``) to the CLI's sub-commands."""
    store = sub.add_parser(
        "store", help="check, recover or copy the state store",
        description="Look after the state store itself: check it for damage, recover a "
        "damaged SQLite file (moved aside; the daemon's adoption pass rebuilds the store "
        "without re-running anything), or copy every record into an empty other store "
        "(PostgreSQL <-> SQLite).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    check = actions.add_parser(
        "check", help="check the store for damage (exit 0 whole, 1 damaged)",
        description="SQLite: PRAGMA integrity_check (--quick: quick_check, what the daemon "
        "runs at start), read-only. PostgreSQL: the schema and every operation's intent.",
        epilog="exit status: 0 whole, 1 damaged or unreadable")
    _add_state(check)
    check.add_argument("--quick", action="store_true",
                       help="PRAGMA quick_check instead of the full integrity_check")
    check.set_defaults(func=cmd_check)

    recover = actions.add_parser(
        "recover", help="move a damaged SQLite store aside and start an empty one",
        description="Move the damaged SQLite store (and its -wal/-shm files) aside to "
        "PATH.damaged-<UTC time> and create an empty store. Nothing runs again: the "
        "daemon's next start begins a new epoch, whose adoption pass looks every manifest "
        "up on the server before anything is sent. Stop the daemon first.",
        epilog="exit status: 0 recovered, 1 refused (in use, whole without --force, "
        "PostgreSQL, no store)")
    _add_state(recover)
    recover.add_argument("--force", action="store_true",
                         help="move the store aside even when its integrity check passes")
    recover.set_defaults(func=cmd_recover)

    copy = actions.add_parser(
        "copy", help="copy every record into an empty other store (PostgreSQL <-> SQLite)",
        description="Copy every intent, operation and epoch of SRC into the empty store "
        "DST, as they are (the daemon on DST continues where SRC stopped). SRC is opened "
        "read-only; stop the daemon writing to it first.",
        epilog="exit status: 0 copied, 1 refused (DST not empty, SRC changed, unreadable)")
    copy.add_argument("--from", dest="source", required=True, metavar="SRC",
                      help="the store to read: a path, sqlite:///path or postgresql://…")
    copy.add_argument("--to", dest="target", required=True, metavar="DST",
                      help="the empty store to write (created when it is a new SQLite file)")
    copy.set_defaults(func=cmd_copy)


def _add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", default=_state_default(), metavar="PATH",
                   help="the state store: a SQLite path or sqlite:///path, or "
                   "postgresql://… (env RECONCILER_STATE)")


def cmd_check(args: argparse.Namespace) -> int:
    """``store check``: 0 when the store is whole; else StoreError (exit 1)."""
    location: str = args.state
    path = sqlite_path(location)
    if path is not None and path != ":memory:" and not Path(path).exists():
        raise StoreError(f"no state store at {path}")
    with open_store(location, readonly=True) as store:
        if isinstance(store, Store):
            pragma = "quick_check" if args.quick else "integrity_check"
            store.check(quick=args.quick)
        else:
            pragma = "schema and references"
            store.check()
        intents = len(store.intents(include_retired=True))
        operations = len(store.operations())
    print(f"state store {shown(location)}: ok ({pragma}; {intents} intents, "
          f"{operations} operations)")
    return EXIT_OK


def in_use(path: Path) -> bool:
    """Whether another process has the SQLite file at ``path`` open (a running daemon):
    an exclusive lock cannot be taken at once. A file too damaged to lock is not in use."""
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        db.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    except sqlite3.DatabaseError:
        return False
    finally:
        db.close()
    return False


def _damage(path: str) -> str | None:
    """What is wrong with the store at ``path`` (None: its integrity check passes)."""
    try:
        with Store(path, readonly=True) as store:
            store.check()
    except StoreError as exc:
        return str(exc)
    return None


def cmd_recover(args: argparse.Namespace) -> int:
    """``store recover``: move a damaged SQLite store aside, create an empty one."""
    location: str = args.state
    path = sqlite_path(location)
    if path is None:
        print(f"reconciler: {shown(location)} is a PostgreSQL store: restore it from a "
              "backup with PostgreSQL's tools, or point the daemon at an empty database "
              "(its adoption pass rebuilds the records without re-running anything)")
        return EXIT_FAILED
    file = Path(path)
    if path == ":memory:" or not file.exists():
        print(f"reconciler: no state store at {path}: nothing to recover (the daemon "
              "creates a new one at its next start)")
        return EXIT_FAILED
    if in_use(file):
        print(f"reconciler: the state store {path} is in use by another process (a running "
              "daemon?): stop it first, then run `reconciler store recover` again")
        return EXIT_FAILED
    damage = _damage(path)
    if damage is None and not args.force:
        print(f"reconciler: the state store {path} is whole (integrity_check: ok): nothing "
              "to recover; --force moves it aside all the same")
        return EXIT_FAILED
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = file.with_name(f"{file.name}.damaged-{stamp}")
    moved: list[str] = []
    try:
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{file}{suffix}")
            if part.exists():
                part.rename(f"{aside}{suffix}")
                moved.append(f"{aside}{suffix}")
    except OSError as exc:
        raise StoreError(f"cannot move the state store {path} aside to {aside}: "
                         f"{exc.strerror or exc}; is its directory writable?") from None
    Store(file).close()  # empty, current schema, no epoch
    print(f"moved the state store {path} aside to {', '.join(moved)}"
          + (f" ({damage})" if damage else " (it was whole; --force)"))
    print(f"created an empty state store at {path}. The next `reconciler run` begins a new "
          "epoch: its adoption pass looks every manifest's operations up on the server and "
          "records what already ran before anything is sent, so nothing runs twice. The "
          f"history of earlier runs stays in {aside}.")
    return EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    """``store copy --from SRC --to DST``: every record of SRC into the empty DST."""
    source, target = str(args.source), str(args.target)
    where = f"{shown(source)} -> {shown(target)}"
    path = sqlite_path(source)
    if path is not None and path != ":memory:" and not Path(path).exists():
        raise StoreError(f"store copy {where}: no state store at {shown(source)}")
    try:
        with open_store(source, readonly=True) as src, open_store(target) as dst:
            report = copy_store(src, dst)
            kinds = (_kind(src), _kind(dst))
    except StoreError as exc:
        raise StoreError(scrub.text(f"store copy {where}: {exc}")) from None
    print(f"{report} from {shown(source)} ({kinds[0]}) into {shown(target)} ({kinds[1]})")
    return EXIT_OK


def _kind(store: StateStore) -> str:
    return "PostgreSQL" if store.shared else "SQLite"
