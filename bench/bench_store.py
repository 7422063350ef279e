"""State store write throughput: transitions per second with ``synchronous=FULL``.

Every transition is one SQLite transaction (WAL, ``synchronous=FULL``: the WAL is fsynced
at every commit), and the engine records each one before or after the HTTP call it
describes, so this bounds how many intents per second one daemon can move. One cycle is
the life of a succeeding intent: claimed (write-ahead, ``submitting``), accepted,
succeeded: three transactions (``Store.save`` of three lifecycle steps). Measured on a
file in a temporary directory (``--dir`` to put it elsewhere, e.g. the volume the daemon will use),
and, for comparison, on ``:memory:`` (no fsync: the cost of SQL and Python alone). Also
times ``intents()`` (what every pass reads) once the store holds the rows.

PostgreSQL rows: ``--postgres URL`` measures that database (it must be empty, or a
database created for the run); without it, when the server binaries are installed, a
throwaway server is started on loopback (tests/pg_support.py) twice: with ``fsync`` on
(durable, comparable to SQLite's ``synchronous=FULL``) and off (the cost of the protocol,
round trips and SQL alone). Each save is a pooled connection's transaction of a
``SELECT … FOR UPDATE`` and two or three statements.

    /work/venv/bin/python bench/bench_store.py [--seconds 5] [--dir PATH] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchlib import table

from reconciler.model.identity import operation_id
from reconciler.model.lifecycle import Accepted, Claimed, ObservedSucceeded, transition
from reconciler.model.records import NewIntent
from reconciler.store import PostgresStore, StateStore
from reconciler.store.sqlite import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def cycles(store: StateStore, seconds: float, offset: int) -> tuple[int, float]:
    """Run begin/pending/succeeded cycles for ``seconds``; (cycles, elapsed)."""
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        i = offset + done
        h = f"{i:064x}"
        intent = NewIntent(h, f"cmd-{i:06d}", "vectors", "reindex", "", "{}")
        op = operation_id(h, 0)
        now = datetime.now(UTC)
        rec = None
        for event in (Claimed(intent, 0, op, "svc", "r1"), Accepted(op, now),
                      ObservedSucceeded(op, {"ok": True})):
            step = transition(rec, event, now)
            store.save(step)
            rec = step.record
        done += 1
    return done, time.perf_counter() - started


def measure(store: StateStore, seconds: float) -> tuple[int, str, str, str, str]:
    """(cycles, transitions/s, ms/transition, intents() rows, intents() ms)."""
    cycles(store, 0.2, 10_000_000)  # warm up
    n, elapsed = cycles(store, seconds, 0)
    started = time.perf_counter()
    rows_read = len(store.intents())
    read = time.perf_counter() - started
    return (n, f"{3 * n / elapsed:,.0f}", f"{elapsed / (3 * n) * 1e3:.3f}", f"{rows_read:,}",
            f"{read * 1e3:.0f}")


def postgres_rows(args: argparse.Namespace) -> list[tuple[object, ...]]:
    """Rows for ``--postgres URL``, or for throwaway servers (fsync on, then off)."""
    if args.postgres:
        with PostgresStore(args.postgres) as store:
            return [(f"postgresql {store.location}", "server's", *measure(store, args.seconds))]
    try:
        from pg_support import PgServer, skip_reason
    except ImportError:  # pragma: no cover - run from a copy without tests/
        return []
    reason = skip_reason()
    if reason is not None:
        print(f"(no PostgreSQL row: {reason})")
        return []
    rows: list[tuple[object, ...]] = []
    for fsync in (True, False):
        server = PgServer(fsync=fsync)
        try:
            database = server.create_database()
            with PostgresStore(server.url(database)) as store:
                label = f"postgresql, loopback (server start {server.start_seconds:.2f} s)"
                rows.append((label, "fsync on" if fsync else "fsync off",
                             *measure(store, args.seconds)))
        finally:
            server.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per store kind")
    parser.add_argument("--dir", default=None, help="where to put the file store")
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="measure this PostgreSQL database instead of a throwaway server")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite rows only")
    args = parser.parse_args()
    rows: list[tuple[object, ...]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "state.db"
        for label, target in (("file (WAL, synchronous=FULL)", str(path)),
                              (":memory:", ":memory:")):
            with Store(target) as store:
                sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
                mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
                rows.append((label, f"{mode}/{'FULL' if sync == 2 else sync}",
                             *measure(store, args.seconds)))
        size = os.path.getsize(path) if path.exists() else 0
    if not args.no_postgres:
        rows.extend(postgres_rows(args))
    print(f"state store transitions ({args.seconds:g} s per kind; one cycle = claimed "
          "+ accepted + succeeded)")
    print(table(("store", "journal/sync", "cycles", "transitions/s", "ms/transition",
                 "intents() rows", "intents() ms"), rows))
    print(f"file store size after the run: {size / 2**20:.1f} MiB (main file; WAL aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
