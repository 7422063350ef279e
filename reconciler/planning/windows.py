"""Which intent a manifest asks for at ``now``: once, this interval window, or a cron tick.

An intent is a manifest's identity plus its window; a new window is a new intent (a new
spec hash), so an interval or schedule runs once per window and never catches up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from reconciler.model.identity import operation_id
from reconciler.model.manifest import Interval, Schedule, ServiceCommand
from reconciler.model.records import NewIntent

__all__ = ["EPOCH", "Desired", "desired_intent"]

#: interval windows are aligned to the Unix epoch
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: the smallest step of a datetime: "strictly after" as a moment
_INSTANT = timedelta(microseconds=1)


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
    #: when this window's tick becomes missed (schedule policies, not missed yet)
    misses_at: datetime | None = None

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


def desired_intent(command: ServiceCommand, now: datetime,
                   not_before: str | None = None) -> Desired:
    """The intent ``command`` asks for at ``now``: once, this interval window, or the
    latest cron tick (marked ``missed`` when older than the starting deadline).

    Time only moves forward for a manifest: ``not_before`` is the latest window already
    recorded for it, and a window before it (a clock set back) is never asked for again:
    the recorded one stays the intent."""
    window, missed, next_window, misses_at = "", False, None, None
    policy = command.policy
    if isinstance(policy, Interval):
        start = _window_start(policy.every, now, not_before)
        window, next_window = _iso(start), start + policy.every
    elif isinstance(policy, Schedule):
        zone = ZoneInfo(policy.timezone)
        tick, next_window = _ticks_around(policy.cron, zone, now)
        floor = _parse_iso(not_before)
        if floor is not None and floor > tick:
            tick = floor
            next_window = _next_tick(policy.cron, zone, max(now, tick))
        window = _iso(tick)
        missed = now - tick > policy.starting_deadline
        if not missed:  # missed once past the deadline: a moment the plan must wake for
            misses_at = tick + policy.starting_deadline + _INSTANT
    # computed once per window and kept with the command: a pass over an unchanged tree
    # hashes nothing
    return Desired(command, command.spec_hash(window), command.canonical_intent(window),
                   window, missed, next_window, misses_at)


def _window_start(every: timedelta, now: datetime, not_before: str | None) -> datetime:
    step = every.total_seconds()
    index = int((now - EPOCH).total_seconds() // step)
    start = EPOCH + timedelta(seconds=index * step)
    floor = _parse_iso(not_before)
    return floor if floor is not None and floor > start else start


def _parse_iso(window: str | None) -> datetime | None:
    if not window:
        return None
    try:
        return datetime.strptime(window, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


# ------------------------------------------------------------------ cron in a time zone

#: more than any daylight-saving shift: how far around ``now`` wall times are searched
_SLACK = timedelta(hours=3)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant a cron wall time (naive, in ``zone``) fires at: a wall time that
    happens twice (fall-back) fires at its first occurrence; one that does not exist
    (spring-forward) at the first valid instant after it."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(first.timestamp())
    lo, hi = min(lo, hi), max(lo, hi)
    while hi - lo > 1:  # the first second whose wall time is past ``wall``
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _steady(zone: ZoneInfo, now: datetime) -> bool:
    """No offset change within ``_SLACK`` of ``now``: wall times map one to one."""
    return (now - _SLACK).astimezone(zone).utcoffset() == (now + _SLACK).astimezone(
        zone).utcoffset()


#: (cron, zone) -> (its latest tick, the tick after it) as last computed
_TICKS: dict[tuple[str, str], tuple[datetime, datetime]] = {}
_TICKS_KEPT = 10_000


def _ticks_around(cron: str, zone: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    """The latest tick at or before ``now`` and the first one after it. Between two ticks
    the answer does not change, so it is kept until ``now`` reaches the next one (or
    moves back before the first): a pass over 10,000 schedules asks croniter nothing."""
    key = (cron, zone.key)
    kept = _TICKS.get(key)
    if kept is not None and kept[0] <= now < kept[1]:
        return kept
    tick = _latest_tick(cron, zone, now)
    around = (tick, _next_tick(cron, zone, max(now, tick)))
    if len(_TICKS) >= _TICKS_KEPT:
        _TICKS.clear()
    _TICKS[key] = around
    return around


def _latest_tick(cron: str, zone: ZoneInfo, now: datetime) -> datetime:
    """The latest tick at or before ``now``, as a UTC instant."""
    local = now.astimezone(zone).replace(tzinfo=None)
    if _steady(zone, now):  # get_prev is strictly before its start: a tick at ``now`` is due
        return _instant(croniter(cron, local + timedelta(microseconds=1)).get_prev(datetime),
                        zone)
    ticks = croniter(cron, local + _SLACK)
    while True:
        instant = _instant(ticks.get_prev(datetime), zone)
        if instant <= now:
            return instant


def _next_tick(cron: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first tick strictly after ``after``, as a UTC instant."""
    local = after.astimezone(zone).replace(tzinfo=None)
    if _steady(zone, after):
        return _instant(croniter(cron, local).get_next(datetime), zone)
    ticks = croniter(cron, local - _SLACK)
    while True:
        instant = _instant(ticks.get_next(datetime), zone)
        if instant > after:
            return instant
