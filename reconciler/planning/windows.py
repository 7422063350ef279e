"""Which intent a manifest asks for at ``now``: once, this interval window, or a cron tick.

An intent is a manifest's identity plus its window; a new window is a new intent (a new
spec hash), so an interval or schedule runs once per window and never catches up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from reconciler.model.identity import operation_id, spec_hash
from reconciler.model.manifest import Interval, Schedule, ServiceCommand
from reconciler.model.records import NewIntent

__all__ = ["EPOCH", "Desired", "desired_intent"]

#: interval windows are aligned to the Unix epoch
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Desired:
    """The intent a manifest asks for at ``now``: its identity and window."""

    command: ServiceCommand
    spec_hash: str
    canonical: str
    window: str
    #: the window's tick was missed by more than the starting deadline
    missed: bool = False
    #: when the next window starts (interval and schedule policies)
    next_window: datetime | None = None

    @property
    def name(self) -> str:
        return self.command.name

    def new_intent(self) -> NewIntent:
        c = self.command
        return NewIntent(self.spec_hash, c.name, c.service.label, c.command, self.window,
                         self.canonical)

    def operation_id(self, attempt: int) -> str:
        return operation_id(self.spec_hash, attempt)


def _iso(moment: datetime) -> str:
    """``moment`` as a window name: UTC, to the second, ``Z``-suffixed."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def desired_intent(command: ServiceCommand, now: datetime) -> Desired:
    """The intent ``command`` asks for at ``now``: once, this interval window, or the
    latest cron tick (marked ``missed`` when older than the starting deadline)."""
    window, missed, next_window = "", False, None
    policy = command.policy
    if isinstance(policy, Interval):
        step = policy.every.total_seconds()
        index = int((now - EPOCH).total_seconds() // step)
        start = EPOCH + timedelta(seconds=index * step)
        window, next_window = _iso(start), start + policy.every
    elif isinstance(policy, Schedule):
        local = now.astimezone(ZoneInfo(policy.timezone))
        # get_prev is strictly before its start: a tick at exactly ``now`` is due now
        tick = croniter(policy.cron, local + timedelta(microseconds=1)).get_prev(datetime)
        following = croniter(policy.cron, local).get_next(datetime)
        window, next_window = _iso(tick), following.astimezone(UTC)
        missed = now - tick > policy.starting_deadline
    canonical = command.canonical_intent(window)
    return Desired(command, spec_hash(canonical), canonical, window, missed, next_window)
