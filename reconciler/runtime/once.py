"""``reconciler run --once``: when the daemon is settled, and the exit status it ends with.

Split out of :mod:`reconciler.runtime.daemon`.
"""

from __future__ import annotations

from reconciler.model.lifecycle import SETTLED_BAD, IntentState
from reconciler.model.manifest import LoadResult
from reconciler.planning.planner import Plan
from reconciler.source.continuity import Continuity
from reconciler.store import StateStore

__all__ = ["once_exit_code", "settled"]


def settled(plan: Plan | None, store: StateStore | None) -> bool:
    """Nothing in flight, no change planned, every manifest settled."""
    if plan is None or store is None:
        return False
    if any(r.in_flight for r in store.intents().values()):
        return False
    if plan.changes:
        return False
    return all(v.settled for v in plan.views)


def once_exit_code(plan: Plan | None, load: LoadResult | None,
                   verdict: Continuity | None) -> int:
    """1 when any manifest failed, stalled, was lost or is invalid, or orphaning is
    withheld for a suspiciously empty source; else 0."""
    assert plan is not None and load is not None
    bad = any(v.state in SETTLED_BAD or v.state == IntentState.INVALID
              for v in plan.views)
    empty = verdict is not None and verdict.suspicious_empty
    return 1 if bad or load.problems or empty else 0
