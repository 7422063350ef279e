"""The cyclic garbage collector, paused while many long-lived values are built.

The daemon's values (manifests, records, plans) hold no reference cycles: reference
counting frees them. A collection that building 50,000 of them triggers scans a heap that
grows with the input, so a plan at 50,000 manifests spent a third of its time in the
collector (``bench/bench_plan.py``'s "gc off" column)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["collections_paused"]


@contextmanager
def collections_paused() -> Iterator[None]:
    """No cyclic collection inside the block (the collector as it was after it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
