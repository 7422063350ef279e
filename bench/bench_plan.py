"""Planner throughput: ``plan()`` over 100, 1 000 and 10 000 manifests.

The planner is pure and runs on every pass (and once more after it, to learn the next
wake-up), so its cost per manifest bounds how large a repository one daemon can follow.
Each size gets realistic recorded states (benchlib.STATES: 60 % succeeded, 10 % pending,
3 % submitting, 5 % failed in backoff, 2 % stalled, 20 % never recorded, 2 % orphans),
dependency chains of up to 5, a few interval and cron policies. Figures are the best of
several runs; the ratio 10k/1k of the per-manifest time should be ~1 (linear). The
"gc off" column repeats the measurement with the cyclic garbage collector disabled: the
planner's own work is linear, but with 10 000 manifests (and their records) alive, the
collections its allocations trigger scan a heap that grows with the input, which can
make the figure with gc on grow faster than linearly (10-15 % at 10k here).

    /work/venv/bin/python bench/bench_plan.py
"""

from __future__ import annotations

import gc
import platform
import sys

from benchlib import (
    best_of,
    check_commands,
    commands,
    manifest_docs,
    recorded_states,
    table,
    utcnow,
)

from reconciler.planning import plan

SIZES = (100, 1_000, 10_000)


def main() -> int:
    now = utcnow()
    check_commands(manifest_docs(300))  # the built commands are what the loader makes
    rows = []
    per: dict[int, float] = {}
    per_no_gc: dict[int, float] = {}
    for size in SIZES:
        desired = commands(manifest_docs(size))
        records = (recorded_states(desired, now))
        current = plan(desired, records, now)
        seconds, runs = best_of(lambda c=desired, r=records: plan(c, r, now),
                                min_time=2.0 if size < 10_000 else 3.0)
        gc.collect()
        gc.disable()
        try:
            no_gc, _ = best_of(lambda c=desired, r=records: plan(c, r, now), min_time=1.0)
        finally:
            gc.enable()
        per[size] = seconds / size * 1e6
        per_no_gc[size] = no_gc / size * 1e6
        rows.append((f"{size:,}", len(records), len(current.executable),
                     f"{seconds * 1e3:.2f}", f"{per[size]:.1f}", f"{per_no_gc[size]:.1f}", runs))
    print(f"plan() throughput, Python {platform.python_version()} on {platform.machine()}")
    print(table(("manifests", "recorded", "executable", "plan ms", "us/manifest",
                 "us/manifest (gc off)", "runs"), rows))
    print(f"per-manifest time ratio 10k/1k: {per[10_000] / per[1_000]:.2f} "
          f"(gc off: {per_no_gc[10_000] / per_no_gc[1_000]:.2f}; 1.00 = linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
