"""State store write throughput: transitions per second with ``synchronous=FULL``.

Every transition is one SQLite transaction (WAL, ``synchronous=FULL``: the WAL is fsynced
at every commit), and the engine records each one before or after the HTTP call it
describes, so this bounds how many intents per second one daemon can move. One cycle is
the life of a succeeding intent: claimed (write-ahead, ``submitting``), accepted,
succeeded: three transactions (``Store.save`` of three lifecycle steps). Measured on a
file in a temporary directory (``--dir`` to put it elsewhere, e.g. the volume the daemon will use),
and, for comparison, on ``:memory:`` (no fsync: the cost of SQL and Python alone). Also
times ``intents()`` (what every pass reads) once the store holds the rows.

    /work/venv/bin/python bench/bench_store.py [--seconds 5] [--dir PATH]
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
from reconciler.store.sqlite import Store


def cycles(store: Store, seconds: float, offset: int) -> tuple[int, float]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per store kind")
    parser.add_argument("--dir", default=None, help="where to put the file store")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "state.db"
        for label, target in (("file (WAL, synchronous=FULL)", str(path)),
                              (":memory:", ":memory:")):
            with Store(target) as store:
                sync = store._db.execute("PRAGMA synchronous").fetchone()[0]
                mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
                cycles(store, 0.2, 10_000_000)  # warm up
                n, elapsed = cycles(store, args.seconds, 0)
                started = time.perf_counter()
                rows_read = len(store.intents())
                read = time.perf_counter() - started
            rows.append((label, f"{mode}/{'FULL' if sync == 2 else sync}", n,
                         f"{3 * n / elapsed:,.0f}", f"{elapsed / (3 * n) * 1e3:.3f}",
                         f"{rows_read:,}", f"{read * 1e3:.0f}"))
        size = os.path.getsize(path) if path.exists() else 0
    print(f"state store transitions ({args.seconds:g} s per kind; one cycle = claimed "
          "+ accepted + succeeded)")
    print(table(("store", "journal/sync", "cycles", "transitions/s", "ms/transition",
                 "intents() rows", "intents() ms"), rows))
    print(f"file store size after the run: {size / 2**20:.1f} MiB (main file; WAL aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
