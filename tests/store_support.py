"""A real store driven through the lifecycle's transitions, as the engine drives it (on
either backend: ``Ledger(store)`` takes any :class:`reconciler.store.StateStore`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler.model.lifecycle import (
    Accepted,
    Claimed,
    Event,
    NeverArrived,
    ObservedFailed,
    ObservedSucceeded,
    Retired,
    RetryRequested,
    Step,
    transition,
)
from reconciler.model.records import IntentRecord
from reconciler.planning.planner import Desired
from reconciler.store import StateStore, Store

REVISION = "rev-1"
ATTEMPT_SPACING = timedelta(minutes=1)


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


class Ledger:
    """A real in-memory (or given) store; each method is one recorded transition."""

    def __init__(self, store: StateStore | None = None, *, retention: int = 50) -> None:
        self.store: StateStore = (store if store is not None
                                  else Store(":memory:", retention=retention))

    @property
    def records(self) -> dict[str, IntentRecord]:
        return self.store.intents()

    def intent(self, want: Desired) -> IntentRecord:
        rec = self.store.intent(want.spec_hash)
        assert rec is not None, f"{want.name} is not recorded"
        return rec

    def apply(self, want: Desired, event: Event, at: datetime) -> Step:
        step = transition(self.store.intent(want.spec_hash), event, at)
        self.store.save(step)
        return step

    def submitted(self, want: Desired, at: datetime, *, attempt: int | None = None) -> Step:
        """Write-ahead record of the next attempt (or ``attempt``) as ``submitting``."""
        if attempt is None:
            rec = self.store.intent(want.spec_hash)
            attempt = rec.attempts if rec is not None else 0
        return self.apply(want, Claimed(want.new_intent(), attempt, want.operation_id(attempt),
                                        want.command.service.id, REVISION), at)

    def accepted(self, want: Desired, at: datetime, *, poll_at: datetime | None = None,
                 server_id: str | None = None) -> Step:
        """The server answered 202 (with ``server_id``, or the id that was sent)."""
        sent = self.intent(want).operation_id
        assert sent is not None
        return self.apply(want, Accepted(server_id or sent, poll_at or at + seconds(1)), at)

    def succeeded(self, want: Desired, at: datetime) -> Step:
        op = self.intent(want).operation_id
        assert op is not None
        return self.apply(want, ObservedSucceeded(op, {"ok": True}), at)

    def failed(self, want: Desired, at: datetime, *, retry_at: datetime | None,
               title: str = "Boom") -> Step:
        """The attempt failed: retry at ``retry_at``, or stall when it is None."""
        op = self.intent(want).operation_id
        assert op is not None
        return self.apply(want, ObservedFailed(op, {"title": title, "detail": "it broke"},
                                               retry_at), at)

    def never_arrived(self, want: Desired, at: datetime) -> Step:
        return self.apply(want, NeverArrived(), at)

    def retired(self, want: Desired, at: datetime, why: str = "orphaned") -> Step:
        assert why in ("orphaned", "superseded")
        return self.apply(want, Retired(why), at)  # type: ignore[arg-type]

    def retry(self, want: Desired, at: datetime) -> Step:
        return self.apply(want, RetryRequested(), at)

    def ran(self, want: Desired, at: datetime) -> None:
        """One whole successful attempt at ``at``."""
        self.submitted(want, at)
        self.accepted(want, at)
        self.succeeded(want, at + seconds(5))

    def failures(self, want: Desired, count: int, at: datetime, *,
                 every: timedelta = ATTEMPT_SPACING) -> None:
        """``count`` attempts that each failed, the last one scheduling a retry."""
        for i in range(count):
            start = at + every * i
            self.submitted(want, start)
            self.accepted(want, start)
            self.failed(want, start + seconds(1), retry_at=start + seconds(20))
