"""The planner: a pure function from (desired, recorded, now) to the actions to take.

No clock, no I/O: ``now`` is passed in, so every decision can be tested table-driven and
replayed. The engine executes the actions; ``reconciler plan`` prints them.

Action kinds (DESIGN section 1, terraform-plan style):

========================  ======================================================  =======
kind                      meaning                                                 change?
========================  ======================================================  =======
``submit``                first attempt of a new intent (after a recovery probe)  yes
``retry``                 next attempt after a failure, backoff elapsed           yes
``resolve``               a POST whose outcome is unknown: look it up first       yes
``poll``                  read an in-flight operation                             no
``timeout``               in flight past its deadline: mark failed, stop          yes
``give-up``               retry impossible (deadline passed): mark stalled        yes
``orphan``                manifest removed or changed: retire the old record      yes
``wait-backoff``          failed; next attempt at ``at``                          no
``wait-dependency``       a dependency has not succeeded (or blocks: stalled)     no
``wait-schedule``         this window's tick was missed; next one at ``at``       no
``wait-capacity``         in-flight limits reached; submitted when a slot frees   no
``noop``                  in sync, suspended, stalled, or a poll not due yet      no
========================  ======================================================  =======
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from croniter import croniter

from reconciler.model.durations import format_duration
from reconciler.model.identity import operation_id, spec_hash
from reconciler.model.manifest import Interval, Schedule, ServiceCommand
from reconciler.model.records import IntentRecord, NewIntent

__all__ = [
    "CHANGE_KINDS",
    "Action",
    "ActionKind",
    "Desired",
    "Limits",
    "Plan",
    "View",
    "ViewState",
    "desired_intent",
    "plan",
]

ActionKind = Literal[
    "submit", "retry", "resolve", "poll", "timeout", "give-up", "orphan",
    "wait-backoff", "wait-dependency", "wait-schedule", "wait-capacity", "noop",
]
CHANGE_KINDS: frozenset[str] = frozenset(
    {"submit", "retry", "resolve", "timeout", "give-up", "orphan"}
)
ViewState = Literal[
    "in_sync", "waiting", "submitting", "pending", "failed", "stalled", "suspended", "orphaned"
]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Limits:
    """Concurrency bounds on operations in flight (submitting or pending)."""

    max_in_flight: int = 16
    max_per_service: int = 4


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


@dataclass(frozen=True)
class Action:
    """One step for the engine, or one line of ``reconciler plan``."""

    kind: ActionKind
    name: str
    spec_hash: str
    reason: str = ""
    attempt: int | None = None
    operation_id: str | None = None
    at: datetime | None = None
    #: resolve: whether a 404 may be followed by the POST (False once not desired)
    may_submit: bool = True
    #: orphan of a changed manifest's previous record: retiring it is bookkeeping of the
    #: store (nothing is sent), so it is executed but is not a change to review
    superseded: bool = False

    @property
    def changes(self) -> bool:
        return self.kind in CHANGE_KINDS and not self.superseded

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind, "name": self.name, "specHash": self.spec_hash,
            "reason": self.reason, "attempt": self.attempt, "operationId": self.operation_id,
            "at": self.at.isoformat() if self.at else None,
        }


@dataclass(frozen=True)
class View:
    """How one manifest stands (status tables, the ``intents`` gauge, ``--once``)."""

    name: str
    state: ViewState
    reason: str = ""
    spec_hash: str | None = None
    #: ``--once`` may stop waiting for it: nothing will change before a future window
    settled: bool = False


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    views: tuple[View, ...]
    #: the earliest future moment at which planning again could yield a different plan
    wake_at: datetime | None = None
    desired: Mapping[str, Desired] = field(default_factory=dict)

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.changes)

    @property
    def executable(self) -> tuple[Action, ...]:
        """Actions that call the API or write the store."""
        return tuple(a for a in self.actions if a.changes or a.kind in ("poll", "orphan"))


def _iso(moment: datetime) -> str:
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


def _dependencies_first(wants: Mapping[str, Desired]) -> list[str]:
    """Names ordered so every loaded dependency comes before its dependents (Kahn's
    algorithm; members of a cycle, which validation already refuses, are left out)."""
    waiting = {n: {d for d in w.command.depends_on if d in wants} for n, w in wants.items()}
    dependents: dict[str, list[str]] = {n: [] for n in wants}
    for name, deps in waiting.items():
        for dep in deps:
            dependents[dep].append(name)
    ready = sorted(n for n, deps in waiting.items() if not deps)
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for nxt in dependents[name]:
            waiting[nxt].discard(name)
            if not waiting[nxt]:
                ready.append(nxt)
    return order


def _failures(rec: IntentRecord) -> int:
    return rec.attempts - rec.retry_base


def _deadline(rec: IntentRecord, command: ServiceCommand) -> datetime | None:
    if rec.first_submitted_at is None:
        return None
    return rec.first_submitted_at + command.timeout


def plan(
    desired: Sequence[ServiceCommand],
    recorded: Mapping[str, IntentRecord],
    now: datetime,
    *,
    limits: Limits | None = None,
) -> Plan:
    """Decide what to do for every manifest and every recorded intent. Pure."""
    limits = limits or Limits()
    wants = {c.name: desired_intent(c, now) for c in desired}
    by_hash = {d.spec_hash: d for d in wants.values()}
    actions: list[Action] = []
    views: dict[str, View] = {}
    wakes: list[datetime] = []

    in_flight = [r for r in recorded.values() if r.in_flight]
    load = len(in_flight)
    per_service: Counter[str] = Counter(r.service for r in in_flight)
    busy_names = {r.name: r for r in in_flight if r.spec_hash not in by_hash}

    def add(action: Action, view: View | None) -> None:
        actions.append(action)
        if view is not None:
            views[view.name] = view
        if action.at is not None and action.at > now:
            wakes.append(action.at)

    def current(name: str) -> IntentRecord | None:
        want = wants.get(name)
        return recorded.get(want.spec_hash) if want else None

    # Dependency facts, computed dependencies-first (no recursion: chains may be long).
    blocked_by: dict[str, tuple[str, str]] = {}  # name -> (its dependency, the stalled root)
    parked_set: set[str] = set()      # names waiting on something only a human can start
    for name in _dependencies_first(wants):
        for dep in wants[name].command.depends_on:
            rec = current(dep)
            if rec is not None and rec.status == "succeeded":
                continue
            if rec is not None and rec.status == "stalled":
                blocked_by.setdefault(name, (dep, dep))
            elif dep in blocked_by:
                blocked_by.setdefault(name, (dep, blocked_by[dep][1]))
            if (dep not in wants or dep in parked_set
                    or (wants[dep].command.suspend and (rec is None or rec.status == "failed"))):
                parked_set.add(name)

    def blocker(name: str) -> str | None:
        """Why ``name`` can never start without human help (a stalled dependency)."""
        if name not in blocked_by:
            return None
        dep, root = blocked_by[name]
        cause = (f"dependency {dep!r} stalled" if dep == root else
                 f"dependency {dep!r} is blocked: {root!r} stalled")
        return f"{cause}; fix it or run 'reconciler retry {root}'"

    def parked(name: str) -> bool:
        """``name`` waits on a dependency that cannot start without a human: one that is
        not loaded (removed or invalid) or suspended, directly or through others. Such a
        wait is settled: ``--once`` must not wait for it forever."""
        return name in parked_set

    def waiting_on(want: Desired) -> str | None:
        for dep in want.command.depends_on:
            if dep not in wants:
                return f"dependency {dep!r} is not loaded (removed or invalid)"
            rec = current(dep)
            if rec is None or rec.status != "succeeded":
                state: str = rec.status if rec else "not yet submitted"
                if wants[dep].command.suspend and rec is None:
                    state = "suspended"
                return f"waiting for dependency {dep!r} ({state})"
        previous = busy_names.get(want.name)
        if previous is not None:
            return (f"previous run of this manifest ({previous.operation_id}) is still "
                    f"{previous.status}")
        return None

    def start(kind: ActionKind, want: Desired, attempt: int, reason: str) -> None:
        nonlocal load
        service = want.command.service.label
        if load >= limits.max_in_flight or per_service[service] >= limits.max_per_service:
            add(Action("wait-capacity", want.name, want.spec_hash,
                       f"{load} operations in flight (limit {limits.max_in_flight}), "
                       f"{per_service[service]} on {service} "
                       f"(limit {limits.max_per_service})", attempt=attempt),
                View(want.name, "waiting", "in-flight limit reached", want.spec_hash))
            return
        load += 1
        per_service[service] += 1
        add(Action(kind, want.name, want.spec_hash, reason, attempt=attempt,
                   operation_id=want.operation_id(attempt)),
            View(want.name, "submitting", reason, want.spec_hash))

    def in_flight_actions(rec: IntentRecord, timeout: timedelta | None, *,
                          current: bool) -> None:
        """Resolve, poll or time out one in-flight record; ``current``: it is what its
        manifest asks for now (else it is only followed to its end, never re-sent)."""
        name = rec.name
        deadline = (rec.first_submitted_at + timeout
                    if timeout is not None and rec.first_submitted_at else None)
        state: ViewState = "submitting" if rec.status == "submitting" else "pending"
        view = View(name, state, "", rec.spec_hash) if current else None
        if deadline is not None and now >= deadline and rec.status == "pending":
            add(Action("timeout", name, rec.spec_hash,
                       f"not finished within {format_duration(timeout or timedelta())} "
                       "of its first submission",
                       attempt=rec.current_attempt, operation_id=rec.operation_id),
                View(name, "stalled", "timed out", rec.spec_hash, settled=True)
                if current else None)
            return
        due = rec.next_poll_at is None or rec.next_poll_at <= now
        if rec.status == "submitting":
            if due:
                add(Action("resolve", name, rec.spec_hash,
                           "outcome of the run request unknown: look the operation up before "
                           "any new request", attempt=rec.current_attempt,
                           operation_id=rec.operation_id,
                           may_submit=current and not wants[name].command.suspend), view)
            else:
                add(Action("noop", name, rec.spec_hash, "lookup scheduled",
                           at=rec.next_poll_at), view)
            return
        if due:
            add(Action("poll", name, rec.spec_hash, "operation in flight",
                       attempt=rec.current_attempt, operation_id=rec.operation_id), view)
        else:
            add(Action("noop", name, rec.spec_hash, "next poll scheduled",
                       at=rec.next_poll_at), view)
        if deadline is not None:
            wakes.append(deadline)

    # 1. every desired manifest, in name order (stable plans)
    for name in sorted(wants):
        want = wants[name]
        cmd = want.command
        rec = recorded.get(want.spec_hash)
        if want.next_window is not None:
            wakes.append(want.next_window)
        if rec is not None and rec.in_flight:
            in_flight_actions(rec, cmd.timeout, current=True)
            continue
        if rec is not None and rec.status == "succeeded":
            add(Action("noop", name, want.spec_hash, "in sync"),
                View(name, "in_sync", "", want.spec_hash, settled=True))
            continue
        if rec is not None and rec.status == "stalled":
            error = (rec.last_error or {}).get("title") or "retries exhausted"
            add(Action("noop", name, want.spec_hash, f"stalled: {error}"),
                View(name, "stalled", str(error), want.spec_hash, settled=True))
            continue
        if cmd.suspend:
            add(Action("noop", name, want.spec_hash, "suspended"),
                View(name, "suspended", "suspend: true", want.spec_hash, settled=True))
            continue
        if rec is not None:  # failed: retry when the backoff has elapsed
            deadline = _deadline(rec, cmd)
            if _failures(rec) > cmd.retry.limit:
                add(Action("give-up", name, want.spec_hash,
                           f"retry limit {cmd.retry.limit} reached"),
                    View(name, "stalled", "retry limit reached", want.spec_hash, settled=True))
            elif deadline is not None and max(rec.next_attempt_at or now, now) >= deadline:
                add(Action("give-up", name, want.spec_hash,
                           "next attempt would start after the "
                           f"{format_duration(cmd.timeout)} deadline"),
                    View(name, "stalled", "deadline passed", want.spec_hash, settled=True))
            elif rec.next_attempt_at is not None and rec.next_attempt_at > now:
                add(Action("wait-backoff", name, want.spec_hash,
                           f"attempt {rec.attempts + 1} after backoff",
                           attempt=rec.attempts, at=rec.next_attempt_at),
                    View(name, "failed", "waiting to retry", want.spec_hash))
            else:
                why = waiting_on(want)
                if why is not None:
                    add(Action("wait-dependency", name, want.spec_hash, why),
                        View(name, "failed", why, want.spec_hash, settled=parked(name)))
                else:
                    start("retry", want, rec.attempts,
                          f"attempt {rec.attempts + 1} of {cmd.retry.limit + 1 + rec.retry_base}")
            continue
        # never recorded
        if want.missed:
            add(Action("wait-schedule", name, want.spec_hash,
                       f"tick {want.window} missed by more than its starting deadline; "
                       "skipped, never caught up", at=want.next_window),
                View(name, "waiting", f"next tick at {_iso(want.next_window or now)}",
                     want.spec_hash, settled=True))
            continue
        blocked = blocker(name)
        if blocked is not None:
            add(Action("wait-dependency", name, want.spec_hash, blocked),
                View(name, "stalled", blocked, want.spec_hash, settled=True))
            continue
        why = waiting_on(want)
        if why is not None:
            add(Action("wait-dependency", name, want.spec_hash, why),
                View(name, "waiting", why, want.spec_hash, settled=parked(name)))
            continue
        window = f" for window {want.window}" if want.window else ""
        start("submit", want, 0, f"new intent{window}")

    # 2. recorded intents no manifest asks for any more: finish what runs, then retire
    for rec in recorded.values():
        if rec.spec_hash in by_hash or rec.retired is not None:
            continue
        retire_as: Literal["orphaned", "superseded"] = (
            "superseded" if rec.name in wants else "orphaned")
        if rec.in_flight:
            in_flight_actions(rec, None, current=False)
            if retire_as == "orphaned":
                views[rec.name] = View(rec.name, "orphaned", "manifest removed; operation "
                                       "still followed", rec.spec_hash)
            continue
        actions.append(Action("orphan", rec.name, rec.spec_hash,
                              "manifest removed" if retire_as == "orphaned" else
                              "spec changed; kept as history",
                              superseded=retire_as == "superseded"))
        if retire_as == "orphaned":
            views[rec.name] = View(rec.name, "orphaned", "manifest removed", rec.spec_hash,
                                   settled=True)

    future = [w for w in wakes if w > now]
    return Plan(tuple(actions), tuple(views[k] for k in sorted(views)),
                min(future) if future else None, wants)
