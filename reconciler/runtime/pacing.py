"""When the next pass comes: at once while work is due and passes make progress, the
plan's wake-up otherwise, and never a busy loop.

After a failed pass the next comes after :data:`RECOVERY_SLEEP`, doubling up to the
interval while passes keep failing; after :data:`IDLE_PASSES` passes in a row that had
work due and recorded nothing, :data:`MIN_RETRY_SLEEP` between passes. A pass whose polls
all answered "pending" did record something (their times): the next due poll is not
delayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from reconciler.execution.engine import Transition
from reconciler.planning.planner import Plan

__all__ = ["IDLE_PASSES", "MIN_RETRY_SLEEP", "RECOVERY_SLEEP", "Pacer"]

log = structlog.get_logger("reconciler.runtime.daemon")

#: seconds between passes that have due work but record nothing
MIN_RETRY_SLEEP = 1.0
#: passes in a row with work due that record nothing before the daemon waits
#: :data:`MIN_RETRY_SLEEP` between passes
IDLE_PASSES = 3
#: after a failed pass the next comes this soon, doubling (up to the interval) while
#: passes keep failing
RECOVERY_SLEEP = 1.0


@dataclass
class Pacer:
    """The daemon's pace: what the passes did, and from that how long to sleep."""

    interval: float
    #: transitions recorded since start (the engine's listener :meth:`count`)
    transitions: int = 0
    #: failed passes in a row that recorded no transition (``--once`` gives up after some)
    failing_passes: int = 0
    #: the wait before the next pass while passes fail (None: the last one did not)
    recovery: float | None = None
    _seen: int = 0
    _idle: int = 0
    _recorded: bool = False

    def count(self, _event: Transition) -> None:
        """The engine's listener: one more transition recorded."""
        self.transitions += 1

    def passed(self, *, ok: bool, transitions_before: int, recorded: bool) -> None:
        """A pass ended: ``recorded`` whether it wrote anything to the store."""
        self._recorded = recorded
        self._recover(ok)
        stuck = not ok and self.transitions == transitions_before
        self.failing_passes = self.failing_passes + 1 if stuck else 0

    def failed(self) -> None:
        """Something before the pass failed (the store, starting an epoch)."""
        self._recover(False)

    def _recover(self, ok: bool) -> None:
        if ok:
            if self.recovery is not None:
                log.info("reconcile_recovered")
            self.recovery = None
            return
        wait = RECOVERY_SLEEP if self.recovery is None else self.recovery * 2
        self.recovery = min(wait, max(self.interval, RECOVERY_SLEEP))
        log.info("reconcile_retry", after=self.recovery)

    def until_wake(self, plan: Plan | None, now: datetime) -> float:
        """Seconds until ``plan`` has something due: 0 when more is executable now (a
        dependency finished, a poll fell due meanwhile), else its wake-up; never more
        than the recovery wait after a failed pass; :data:`MIN_RETRY_SLEEP` after idle
        passes."""
        wait = self._until_due(plan, now)
        return wait if self.recovery is None else min(wait, self.recovery)

    def _until_due(self, plan: Plan | None, now: datetime) -> float:
        if plan is None:
            return float("inf")
        progressed = self.transitions != self._seen
        self._seen = self.transitions
        busy = progressed or self._recorded or not plan.executable
        self._idle = 0 if busy else self._idle + 1
        if plan.executable:
            if self.recovery is not None and not progressed:
                return self.recovery
            return MIN_RETRY_SLEEP if self._idle > IDLE_PASSES else 0.0
        if plan.wake_at is None:
            return float("inf")
        return (plan.wake_at - now).total_seconds()
