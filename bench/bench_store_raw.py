"""Store transitions against raw ``sqlite3`` running the very SQL the store ran.

The store's statements are traced (``set_trace_callback``: the expanded SQL, ``BEGIN`` and
``COMMIT`` included) while it runs cycles (claimed + accepted + succeeded: three
transactions, as ``bench_store.py``) on a file; the same statements are then replayed by a
bare connection with the same pragmas (WAL, ``synchronous=FULL``) on a fresh file of the
same schema. The ratio of the two rates is the store's own cost above SQLite's (1.0: none);
the median of a few rounds, each ratio measured within its round (the disk's fsync time
varies a lot on a shared machine). Prints one JSON object.

    python bench/bench_store_raw.py [--seconds 3] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from bench_store import cycles

from reconciler.store.sqlite import Store


def one_round(directory: str | None, seconds: float) -> tuple[float, float, int, int]:
    """(store seconds, raw seconds, transitions, statements) of one traced run."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        traced: list[str] = []
        with Store(str(Path(tmp) / "store.db")) as store:
            cycles(store, 0.2, 10_000_000)  # warm up
            store._db.set_trace_callback(traced.append)
            n, elapsed = cycles(store, seconds, 0)
            store._db.set_trace_callback(None)
        fresh = Path(tmp) / "raw.db"
        with Store(str(fresh)) as store:  # the same schema, migrated
            cycles(store, 0.2, 10_000_000)
        db = sqlite3.connect(str(fresh), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        started = time.perf_counter()
        for sql in traced:
            db.execute(sql).fetchall()
        raw = time.perf_counter() - started
        db.close()
    return elapsed, raw, 3 * n, len(traced)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="in all, over the rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    rounds = [one_round(args.dir, args.seconds / args.rounds) for _ in range(args.rounds)]
    ratios = sorted(raw / store for store, raw, _, _ in rounds)  # each within its round
    store_s = sum(r[0] for r in rounds)
    raw_s = sum(r[1] for r in rounds)
    transitions = sum(r[2] for r in rounds)
    print(json.dumps({"scenario": "store", "store_tps": transitions / store_s,
                      "raw_tps": transitions / raw_s, "ratio": ratios[len(ratios) // 2],
                      "ratios": ratios, "statements": sum(r[3] for r in rounds),
                      "transitions": transitions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
