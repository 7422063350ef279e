"""The planner: a pure function from (desired, recorded, now) to the actions to take.

No clock, no I/O: ``now`` is passed in, so every decision can be tested table-driven and
replayed. The engine executes the actions; ``reconciler plan`` prints them. The action
kinds are tabled in :mod:`reconciler.planning.actions`; the retry budget, backoff and
deadline rules are :mod:`reconciler.planning.policy`.

:func:`plan` reads top to bottom:

1. the intent every manifest asks for at ``now`` (:func:`desired_intent`);
2. the facts every decision may need (:class:`_Situation`: dependency facts, previous
   runs still in flight), and the :class:`Capacity` the operations in flight leave;
3. every desired manifest, in name order (:func:`_plan_manifest`);
4. every recorded intent no manifest asks for any more: a held manifest's (invalid now, or
   its source cannot be trusted to say it is gone: :func:`_plan_held`) keeps its state,
   the others are followed and retired (:func:`_plan_leftover`);
5. a view for every held manifest with no record (``invalid``);
6. the plan, with the earliest future moment at which it could change (``wake_at``:
   until then, the same inputs give the same plan; the engine relies on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from reconciler.model.durations import format_duration
from reconciler.model.lifecycle import IntentState
from reconciler.model.manifest import Hold, ServiceCommand
from reconciler.model.records import IntentRecord
from reconciler.planning import policy
from reconciler.planning.actions import CHANGE_KINDS, Action, ActionKind, Plan, View
from reconciler.planning.capacity import Capacity, Limits
from reconciler.planning.dependencies import (
    DependencyFacts,
    current_record,
    dependencies_first,
    dependency_facts,
)
from reconciler.planning.memo import PlanMemo
from reconciler.planning.windows import Desired, _iso, desired_intent

__all__ = [
    "CHANGE_KINDS",
    "Action",
    "ActionKind",
    "Desired",
    "Limits",
    "Plan",
    "PlanMemo",
    "View",
    "desired_intent",
    "follow_action",
    "plan",
]


def plan(
    desired: Sequence[ServiceCommand],
    recorded: Mapping[str, IntentRecord],
    now: datetime,
    *,
    limits: Limits | None = None,
    windows: Mapping[str, str] | None = None,
    held: Mapping[str, Hold] = MappingProxyType({}),
    memo: PlanMemo | None = None,
) -> Plan:
    """Decide what to do for every manifest and every recorded intent. Pure.

    ``windows``: the latest window recorded per manifest name (history included), so a
    clock set back never asks for an older window again. ``held``: manifests that are not
    valid now but keep their state (:attr:`reconciler.model.manifest.LoadResult.held`):
    their records are never orphaned and nothing new is sent for them; what is in flight
    is still followed to its end. ``memo``: what the last plan of the same load kept
    (:class:`~reconciler.planning.memo.PlanMemo`); the plan is the same without it."""
    latest = windows or {}
    memo = memo if memo is not None else PlanMemo()
    memo.begin(desired)
    wants = {c.name: memo.desired(c, now, latest.get(c.name)) for c in desired}
    situation = _Situation.of(wants, recorded, now, memo)
    capacity = Capacity.taken_by(recorded.values(), limits or Limits())
    draft = _Draft(now)
    for name in sorted(wants):  # name order: stable plans
        want = wants[name]
        kept = memo.reuse(want, recorded.get(want.spec_hash))
        if kept is not None:
            draft.add(*kept)
        else:
            _plan_manifest(situation, capacity, draft, want, memo)
    latest_held: dict[str, IntentRecord] = {}
    busy_held: set[str] = set()
    for rec in recorded.values():
        if rec.spec_hash not in situation.asked_for and rec.retired is None:
            if rec.name in held and rec.name not in wants:
                _plan_held(situation, draft, rec)
                shown = latest_held.get(rec.name)
                if shown is None or (rec.updated_at, rec.created_at) >= (
                        shown.updated_at, shown.created_at):
                    latest_held[rec.name] = rec
                if rec.in_flight:
                    busy_held.add(rec.name)
                continue
            _plan_leftover(situation, draft, rec)
    for name, rec in latest_held.items():  # the view of a held manifest: its latest record
        draft.show(_held_view(rec, held[name], in_flight=name in busy_held))
    for name in sorted(held):  # invalid now, never recorded: shown, nothing to keep
        hold = held[name]
        if hold.shows_invalid and name not in wants and name not in draft.views:
            draft.show(View(name, IntentState.INVALID, hold.message, None, settled=True))
    return draft.finish(wants)


# ------------------------------------------------------------------ what a pass knows


@dataclass(frozen=True)
class _Situation:
    """The inputs of one pass and the facts derived from them, read by every step."""

    wants: Mapping[str, Desired]
    recorded: Mapping[str, IntentRecord]
    now: datetime
    #: the spec hashes some manifest asks for now
    asked_for: frozenset[str]
    deps: DependencyFacts
    #: in-flight records no manifest asks for any more, by name: a previous run
    busy: Mapping[str, IntentRecord]

    @classmethod
    def of(cls, wants: Mapping[str, Desired], recorded: Mapping[str, IntentRecord],
           now: datetime, memo: PlanMemo) -> _Situation:
        asked_for = frozenset(d.spec_hash for d in wants.values())
        busy = {r.name: r for r in recorded.values()
                if r.in_flight and r.spec_hash not in asked_for}
        order = memo.dependency_order(lambda: dependencies_first(wants))
        return cls(wants, recorded, now, asked_for,
                   dependency_facts(wants, recorded, order=order), busy)

    def waiting_on(self, want: Desired) -> str | None:
        """What ``want`` waits for before it may start: a dependency not in sync, or a
        previous run of its manifest still in flight (None: nothing)."""
        for dep in want.command.depends_on:
            if dep not in self.wants:
                return f"dependency {dep!r} is not loaded (removed or invalid)"
            rec = current_record(self.wants, self.recorded, dep)
            if rec is None or rec.status != IntentState.IN_SYNC:
                state: str = rec.status if rec is not None else "not yet submitted"
                if self.wants[dep].command.suspend and rec is None:
                    state = IntentState.SUSPENDED
                return f"waiting for dependency {dep!r} ({state})"
        previous = self.busy.get(want.name)
        if previous is not None:
            return (f"previous run of this manifest ({previous.operation_id}) is still "
                    f"{previous.status}")
        return None


@dataclass
class _Draft:
    """The plan being written: actions in order, the latest view per name, wake-ups."""

    now: datetime
    actions: list[Action] = field(default_factory=list)
    views: dict[str, View] = field(default_factory=dict)
    wakes: list[datetime] = field(default_factory=list)
    queued: list[Action] = field(default_factory=list)

    def add(self, action: Action, view: View | None = None) -> None:
        self.actions.append(action)
        if view is not None:
            self.show(view)
        self.wake(action.at)

    def show(self, view: View) -> None:
        self.views[view.name] = view

    def wake(self, moment: datetime | None) -> None:
        if moment is not None:
            self.wakes.append(moment)

    def finish(self, desired: Mapping[str, Desired]) -> Plan:
        future = [w for w in self.wakes if w > self.now]
        return Plan(tuple(self.actions), tuple(self.views[k] for k in sorted(self.views)),
                    min(future) if future else None, desired, tuple(self.queued))


# ------------------------------------------------------------------ desired manifests


def _plan_manifest(s: _Situation, capacity: Capacity, draft: _Draft, want: Desired,
                   memo: PlanMemo) -> None:
    """The action for the intent ``want``, by its recorded state (a settled one is kept
    in ``memo`` for the next plan)."""
    name, h = want.name, want.spec_hash
    rec = s.recorded.get(h)
    draft.wake(want.next_window)
    if rec is not None and rec.in_flight:
        _follow(s, draft, rec, want.command)
    elif rec is not None and rec.status == IntentState.IN_SYNC:
        action, view = (Action("noop", name, h, "in sync"),
                        View(name, IntentState.IN_SYNC, "", h, settled=True))
        memo.keep(want, rec, action, view)
        draft.add(action, view)
    elif rec is not None and rec.status in (IntentState.STALLED, IntentState.LOST):
        error = str((rec.last_error or {}).get("title") or "retries exhausted")
        action, view = (Action("noop", name, h, f"{rec.status}: {error}"),
                        View(name, rec.status, error, h, settled=True))
        memo.keep(want, rec, action, view)
        draft.add(action, view)
    elif want.command.suspend:
        draft.add(Action("noop", name, h, IntentState.SUSPENDED.value),
                  View(name, IntentState.SUSPENDED, "suspend: true", h, settled=True))
    elif rec is not None:  # failed
        _plan_failed(s, capacity, draft, want, rec)
    else:
        _plan_new(s, capacity, draft, want)


def _plan_failed(s: _Situation, capacity: Capacity, draft: _Draft, want: Desired,
                 rec: IntentRecord) -> None:
    """A failed intent: give up, wait for its backoff or dependencies, or retry."""
    name, h, cmd = want.name, want.spec_hash, want.command
    if policy.retry_budget_spent(rec, cmd):
        draft.add(Action("give-up", name, h, f"retry limit {cmd.retry.limit} reached"),
                  View(name, IntentState.STALLED, "retry limit reached", h, settled=True))
    elif policy.retry_past_deadline(rec, cmd, s.now):
        draft.add(Action("give-up", name, h, "next attempt would start after the "
                         f"{format_duration(cmd.timeout)} deadline"),
                  View(name, IntentState.STALLED, "deadline passed", h, settled=True))
    elif policy.in_backoff(rec, s.now):
        draft.add(Action("wait-backoff", name, h, f"attempt {rec.attempts + 1} after backoff",
                         attempt=rec.attempts, at=rec.next_attempt_at),
                  View(name, IntentState.FAILED, "waiting to retry", h))
    elif (blocked := s.deps.blocker(name)) is not None:
        draft.add(Action("wait-dependency", name, h, blocked),
                  View(name, IntentState.STALLED, blocked, h, settled=True))
    elif (why := s.waiting_on(want)) is not None:
        draft.add(Action("wait-dependency", name, h, why),
                  View(name, IntentState.FAILED, why, h, settled=s.deps.is_parked(name)))
        draft.wake(policy.deadline(rec, cmd))  # while it waits, its deadline may pass
    else:
        _start(capacity, draft, "retry", want, rec.attempts,
               f"attempt {rec.attempts + 1} of {policy.attempts_allowed(rec, cmd)}",
               waits_until=policy.deadline(rec, cmd))


def _plan_new(s: _Situation, capacity: Capacity, draft: _Draft, want: Desired) -> None:
    """A never-recorded intent: skip a missed tick, wait for dependencies, or submit."""
    name, h = want.name, want.spec_hash
    if want.missed:
        draft.add(Action("wait-schedule", name, h,
                         f"tick {want.window} missed by more than its starting deadline; "
                         "skipped, never caught up", at=want.next_window),
                  View(name, IntentState.WAITING, f"next tick at {_iso(want.next_window or s.now)}",
                       h, settled=True))
    elif (blocked := s.deps.blocker(name)) is not None:
        draft.add(Action("wait-dependency", name, h, blocked),
                  View(name, IntentState.STALLED, blocked, h, settled=True))
    elif (why := s.waiting_on(want)) is not None:
        draft.add(Action("wait-dependency", name, h, why),
                  View(name, IntentState.WAITING, why, h, settled=s.deps.is_parked(name)))
        draft.wake(want.misses_at)  # while it waits, its tick may become missed
    else:
        window = f" for window {want.window}" if want.window else ""
        _start(capacity, draft, "submit", want, 0, f"new intent{window}",
               waits_until=want.misses_at)


def _start(capacity: Capacity, draft: _Draft, kind: ActionKind, want: Desired,
           attempt: int, reason: str, *, waits_until: datetime | None) -> None:
    """Submit or retry ``want`` as ``attempt`` if the in-flight limits allow it; held back,
    the plan wakes at ``waits_until`` (when waiting would change what to do)."""
    service = want.command.service.label
    if not capacity.try_take(service):
        draft.wake(waits_until)
        draft.add(Action("wait-capacity", want.name, want.spec_hash, capacity.describe(service),
                         attempt=attempt),
                  View(want.name, IntentState.WAITING, "in-flight limit reached", want.spec_hash))
        # the start, made when a slot frees (its operation id is the engine's to compute)
        draft.queued.append(Action(kind, want.name, want.spec_hash, reason, attempt=attempt))
        return
    draft.add(Action(kind, want.name, want.spec_hash, reason, attempt=attempt,
                     operation_id=want.operation_id(attempt)),
              View(want.name, IntentState.SUBMITTING, reason, want.spec_hash))


# ------------------------------------------------------------------ in flight, leftovers


def _follow(s: _Situation, draft: _Draft, rec: IntentRecord,
            command: ServiceCommand | None) -> None:
    """Resolve, poll or time out one in-flight record. ``command``: the manifest that
    asks for it now; None: it is only followed to its end (no view, no deadline, never
    re-sent)."""
    name, h = rec.name, rec.spec_hash
    action = follow_action(rec, command, s.now)
    if action.kind == "timeout":
        draft.add(action, View(name, IntentState.STALLED, "timed out", h, settled=True))
        return
    state = IntentState.SUBMITTING if rec.status == IntentState.SUBMITTING else IntentState.PENDING
    draft.add(action, View(name, state, "", h) if command is not None else None)
    if rec.status != IntentState.SUBMITTING:
        draft.wake(policy.deadline(rec, command))


def follow_action(rec: IntentRecord, command: ServiceCommand | None,
                  now: datetime) -> Action:
    """The step for an in-flight record at ``now``: ``timeout`` past its deadline (while a
    manifest asks for it), ``resolve`` or ``poll`` when its look is due, else ``noop``
    until then. ``command``: the manifest asking for it (None: only followed to its end).
    The planner's rule, and the engine's when it follows an operation within a pass."""
    name, h = rec.name, rec.spec_hash
    timed_out = (rec.status == IntentState.PENDING
                 and policy.past_deadline(now, policy.deadline(rec, command)))
    if command is not None and timed_out:
        return Action("timeout", name, h, f"not finished within "
                      f"{format_duration(command.timeout)} of its first submission",
                      attempt=rec.current_attempt, operation_id=rec.operation_id)
    due = rec.next_poll_at is None or rec.next_poll_at <= now
    if rec.status == IntentState.SUBMITTING:
        if due:
            return Action("resolve", name, h, "outcome of the run request unknown: look "
                          "the operation up before any new request",
                          attempt=rec.current_attempt, operation_id=rec.operation_id,
                          may_submit=command is not None and not command.suspend)
        return Action("noop", name, h, "lookup scheduled", at=rec.next_poll_at)
    if due:
        return Action("poll", name, h, "operation in flight", attempt=rec.current_attempt,
                      operation_id=rec.operation_id)
    return Action("noop", name, h, "next poll scheduled", at=rec.next_poll_at)


def _plan_held(s: _Situation, draft: _Draft, rec: IntentRecord) -> None:
    """A recorded intent of a held manifest (its document invalid now, its file broken, or
    the source not trusted to say it is gone): it keeps its record and state. What is in
    flight is still followed to its end (never re-sent); nothing new is submitted, nothing
    is orphaned."""
    if rec.in_flight:
        _follow(s, draft, rec, None)


def _held_view(rec: IntentRecord, hold: Hold, *, in_flight: bool) -> View:
    """How a held manifest stands (``rec``: its latest record): ``invalid`` when its own
    document or file is at fault, else its recorded state; with the hold's message (FILE:LINE
    and why). Not settled while any of its records is in flight (still followed)."""
    state = IntentState.INVALID if hold.shows_invalid else rec.status
    return View(rec.name, state, hold.message, rec.spec_hash, settled=not in_flight)


def _plan_leftover(s: _Situation, draft: _Draft, rec: IntentRecord) -> None:
    """A recorded intent no manifest asks for any more: follow what runs, then retire it.
    Its manifest was changed (superseded: history, no view) or removed (orphaned)."""
    superseded = rec.name in s.wants
    if rec.in_flight:
        _follow(s, draft, rec, None)
        if not superseded:
            draft.show(View(rec.name, IntentState.ORPHANED,
                            "manifest removed; operation still followed", rec.spec_hash))
        return
    draft.add(Action("orphan", rec.name, rec.spec_hash,
                     "spec changed; kept as history" if superseded else "manifest removed",
                     superseded=superseded),
              None if superseded else
              View(rec.name, IntentState.ORPHANED, "manifest removed", rec.spec_hash, settled=True))
