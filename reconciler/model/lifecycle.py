"""The lifecycle of one intent: pure transitions ``(record, event, now) -> Step``.

The engine does the I/O and turns each answer into an event; :func:`transition` decides the
intent's next record (and its attempt's operation row); the store persists the step as given.
Every decision about states lives here, in one table:

=================  ==================  ======================================================
from               event               to
=================  ==================  ======================================================
(none), failed,    Claimed             submitting: attempt n recorded before its POST (or a
submitting                             probe found it on the server)
submitting         Accepted            pending: the 202's operation id is the one followed
submitting,        Deferred            unchanged: look (or send) again at ``next_poll_at``;
pending                                ``unsent`` when the request certainly did not execute
submitting         Refused             stalled: the API refused the request for good
submitting         NeverArrived        failed, due now (a retry), or unrecorded (attempt 0):
                                       the POST never reached the server and is not re-sent
in flight, lost,   ObservedPending     pending: the server has it and it runs (accepted from
stalled, failed                        now on: no 404 ever leads to sending it again)
in flight, lost,   ObservedSucceeded   in_sync (a success stays a success, even past the
stalled, failed                        deadline: the last look wins)
in flight, lost,   ObservedFailed      failed when a retry is due at ``retry_at``, else stalled
stalled, failed
pending            NotVisible          pending: an accepted operation answered 404; look
                                       again (``missing_since`` marks the first miss)
pending            Lost                lost: still not visible past the not-found tolerance
pending            TimedOut            stalled: not terminal within the manifest's timeout
failed             GaveUp              stalled: the next attempt cannot come (limit, deadline)
(none), any        Unresolvable        stalled: cannot even be submitted (unknown service)
any                Retired             unchanged state, kept as history (orphaned/superseded)
any (retired)      Revived             unchanged state, current again (a revert): nothing sent
failed, stalled,   RetryRequested      failed, due now, with a fresh retry budget and deadline
lost
=================  ==================  ======================================================

Any other (state, event) pair is a bug of the caller and raises :class:`InvalidTransition`.
Every step carries the version of the record it was computed from: the store writes it only
if the stored record is still at that version (a compare-and-set), so of two processes that
claim the same attempt, exactly one wins and only that one sends the POST.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from reconciler.model.events import (
    Accepted,
    Claimed,
    Deferred,
    Event,
    GaveUp,
    Lost,
    NeverArrived,
    NotVisible,
    ObservedFailed,
    ObservedPending,
    ObservedSucceeded,
    Refused,
    Retired,
    RetryRequested,
    Revived,
    TimedOut,
    Unresolvable,
)
from reconciler.model.records import IntentRecord, NewIntent, OperationRecord
from reconciler.model.states import (
    IN_FLIGHT,
    RECORDED,
    SETTLED_BAD,
    IntentState,
    OperationStatus,
)

__all__ = [
    "IN_FLIGHT",
    "RECORDED",
    "SETTLED_BAD",
    "Accepted",
    "Claimed",
    "Deferred",
    "Event",
    "GaveUp",
    "IntentState",
    "InvalidTransition",
    "Lost",
    "NeverArrived",
    "NotVisible",
    "ObservedFailed",
    "ObservedPending",
    "ObservedSucceeded",
    "OperationChange",
    "OperationStatus",
    "Refused",
    "Retired",
    "RetryRequested",
    "Revived",
    "Step",
    "TimedOut",
    "Transition",
    "Unresolvable",
    "transition",
]

Error = Mapping[str, Any]
S = IntentState


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Transition:
    """One recorded change of one intent, for logs and metrics."""

    name: str
    service: str
    command: str
    spec_hash: str
    state: str
    previous: str | None
    operation_id: str | None = None
    attempt: int | None = None
    revision: str = ""
    #: seconds from submission to the terminal state, on terminal transitions
    duration: float | None = None
    #: succeeded, failed or timed_out, on terminal transitions of an operation
    outcome: str | None = None
    error: Mapping[str, Any] | None = None
    reason: str = ""


@dataclass(frozen=True)
class OperationChange:
    """New values for the row of attempt ``attempt`` of ``spec_hash`` (None: unchanged)."""

    spec_hash: str
    attempt: int
    status: str
    operation_id: str | None = None
    finished_at: datetime | None = None
    error: Error | None = None
    result: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Step:
    """What one event does: the record to persist (None: forget the intent), the
    attempt's operation row (new, changed or dropped), and the event for listeners."""

    record: IntentRecord | None
    spec_hash: str
    #: the version the stored record must still have (None: no record may exist)
    expect_version: int | None = None
    new_operation: OperationRecord | None = None
    operation_change: OperationChange | None = None
    drop_operation: int | None = None
    transition: Transition | None = None


class InvalidTransition(ValueError):
    """An event that the intent's state does not allow: a bug of the caller."""


def transition(record: IntentRecord | None, event: Event, now: datetime) -> Step:
    """The step ``event`` makes from ``record`` at ``now``. Pure."""
    rule = _RULES.get(type(event))
    if rule is None:  # pragma: no cover - every event type has a rule
        raise InvalidTransition(f"no rule for {type(event).__name__}")
    allowed, apply = rule
    state = record.status if record is not None else None
    if state not in allowed:
        raise InvalidTransition(
            f"{type(event).__name__} is not allowed from {state or 'no record'}"
            + (f" ({record.name})" if record is not None else ""))
    step = apply(record, event, now)
    base = record.version if record is not None else None
    new = replace(step.record, version=(base or 0) + 1) if step.record is not None else None
    return replace(step, record=new, expect_version=base)


# ---------------------------------------------------------------------------- rules


def _claimed(rec: IntentRecord | None, e: Claimed, now: datetime) -> Step:
    i = e.intent
    base = rec if rec is not None else _new_record(i, now, e.revision)
    new = replace(
        base, status=S.SUBMITTING, attempts=e.attempt + 1, operation_id=e.operation_id,
        service_id=e.service_id, first_submitted_at=base.first_submitted_at or now,
        attempt_started_at=now, next_attempt_at=None, next_poll_at=None, poll_count=0,
        revision=e.revision, updated_at=now, retired=None)
    op = OperationRecord(e.operation_id, i.spec_hash, i.name, e.attempt, e.service_id, now,
                         None, OperationStatus.SUBMITTING, None, None, e.revision)
    event = None if e.adopted else _event(new, S.SUBMITTING, rec.status if rec else None,
                                          operation_id=e.operation_id)
    return Step(new, i.spec_hash, new_operation=op, transition=event)


def _accepted(rec: IntentRecord | None, e: Accepted, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, status=S.PENDING, operation_id=e.operation_id,
                  next_poll_at=e.next_poll_at, poll_count=0, last_error=None, updated_at=now,
                  accepted_at=now, missing_since=None)
    change = _change(rec, OperationStatus.PENDING, operation_id=e.operation_id)
    return Step(new, rec.spec_hash, operation_change=change,
                transition=_event(new, S.PENDING, rec.status, operation_id=e.operation_id))


def _deferred(rec: IntentRecord | None, e: Deferred, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, next_poll_at=e.next_poll_at, poll_count=rec.poll_count + 1,
                  last_error=e.error if e.error is not None else rec.last_error,
                  attempt_started_at=None if e.unsent else rec.attempt_started_at,
                  updated_at=now)
    return Step(new, rec.spec_hash)


def _refused(rec: IntentRecord | None, e: Refused, now: datetime) -> Step:
    assert rec is not None
    new = _settle(rec, S.STALLED, now, e.error)
    change = _change(rec, OperationStatus.FAILED, finished_at=now, error=e.error)
    return Step(new, rec.spec_hash, operation_change=change, transition=_event(
        new, S.STALLED, rec.status, error=e.error, outcome=OperationStatus.FAILED,
        reason="the API refused the request"))


def _never_arrived(rec: IntentRecord | None, _e: NeverArrived, now: datetime) -> Step:
    assert rec is not None
    if rec.attempts <= 1:
        return Step(None, rec.spec_hash, drop_operation=rec.current_attempt)
    new = replace(rec, status=S.FAILED, attempts=rec.attempts - 1, next_attempt_at=now,
                  updated_at=now)
    return Step(new, rec.spec_hash, drop_operation=rec.current_attempt)


def _observed_pending(rec: IntentRecord | None, e: ObservedPending, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, status=S.PENDING, operation_id=e.operation_id,
                  next_poll_at=e.next_poll_at, poll_count=e.poll_count, last_error=None,
                  updated_at=now, accepted_at=rec.accepted_at or now, missing_since=None)
    change = _change(rec, e.status, operation_id=e.operation_id)
    event = (None if rec.status == S.PENDING
             else _event(new, S.PENDING, rec.status, operation_id=e.operation_id))
    return Step(new, rec.spec_hash, operation_change=change, transition=event)


def _observed_succeeded(rec: IntentRecord | None, e: ObservedSucceeded,
                        now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, status=S.IN_SYNC, operation_id=e.operation_id, next_poll_at=None,
                  next_attempt_at=None, last_error=None, succeeded_at=now, updated_at=now)
    change = _change(rec, OperationStatus.SUCCEEDED, operation_id=e.operation_id,
                     finished_at=now, result=e.result)
    return Step(new, rec.spec_hash, operation_change=change, transition=_event(
        new, S.IN_SYNC, rec.status, operation_id=e.operation_id,
        outcome=OperationStatus.SUCCEEDED, duration=_since_attempt(rec, now)))


def _observed_failed(rec: IntentRecord | None, e: ObservedFailed, now: datetime) -> Step:
    assert rec is not None
    state = S.FAILED if e.retry_at is not None else S.STALLED
    new = replace(_settle(rec, state, now, e.error), next_attempt_at=e.retry_at)
    change = _change(rec, OperationStatus.FAILED, operation_id=e.operation_id,
                     finished_at=now, error=e.error)
    return Step(new, rec.spec_hash, operation_change=change, transition=_event(
        new, state, rec.status, operation_id=e.operation_id, outcome=OperationStatus.FAILED,
        error=e.error, duration=_since_attempt(rec, now), reason=e.reason))


def _not_visible(rec: IntentRecord | None, e: NotVisible, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, next_poll_at=e.next_poll_at, poll_count=rec.poll_count + 1,
                  missing_since=rec.missing_since or now, updated_at=now)
    return Step(new, rec.spec_hash)


def _lost(rec: IntentRecord | None, e: Lost, now: datetime) -> Step:
    assert rec is not None
    error = {"title": "Lost", "detail": e.reason}
    new = _settle(rec, S.LOST, now, error)
    change = _change(rec, OperationStatus.LOST, finished_at=now, error=error)
    return Step(new, rec.spec_hash, operation_change=change, transition=_event(
        new, S.LOST, rec.status, error=error, outcome=OperationStatus.LOST,
        duration=_since_attempt(rec, now), reason=e.reason))


def _timed_out(rec: IntentRecord | None, e: TimedOut, now: datetime) -> Step:
    assert rec is not None
    error = {"title": "Timed out", "detail": e.reason}
    new = _settle(rec, S.STALLED, now, error)
    change = _change(rec, OperationStatus.TIMED_OUT, finished_at=now, error=error)
    return Step(new, rec.spec_hash, operation_change=change, transition=_event(
        new, S.STALLED, rec.status, error=error, outcome=OperationStatus.TIMED_OUT,
        duration=_since_attempt(rec, now), reason=e.reason))


def _gave_up(rec: IntentRecord | None, e: GaveUp, now: datetime) -> Step:
    assert rec is not None
    error = {"title": "Gave up", "detail": e.reason}
    new = _settle(rec, S.STALLED, now, error)
    return Step(new, rec.spec_hash,
                transition=_event(new, S.STALLED, rec.status, error=error, reason=e.reason))


def _unresolvable(rec: IntentRecord | None, e: Unresolvable, now: datetime) -> Step:
    base = rec if rec is not None else _new_record(e.intent, now, e.revision)
    new = _settle(base, S.STALLED, now, e.error)
    return Step(new, e.intent.spec_hash, transition=_event(
        new, S.STALLED, rec.status if rec else None, error=e.error, operation_id=None))


def _retired(rec: IntentRecord | None, e: Retired, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, retired=e.why, updated_at=now)
    return Step(new, rec.spec_hash, transition=_event(new, e.why, rec.status, reason=e.reason))


def _revived(rec: IntentRecord | None, _e: Revived, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, retired=None, updated_at=now)
    return Step(new, rec.spec_hash, transition=_event(new, rec.status, rec.retired,
                                                      reason="asked for again"))


def _retry_requested(rec: IntentRecord | None, _e: RetryRequested, now: datetime) -> Step:
    assert rec is not None
    new = replace(rec, status=S.FAILED, retry_base=rec.attempts, first_submitted_at=None,
                  next_attempt_at=now, updated_at=now)
    return Step(new, rec.spec_hash,
                transition=_event(new, S.FAILED, rec.status, reason="retry requested"))


# ---------------------------------------------------------------------------- pieces


def _new_record(intent: NewIntent, now: datetime, revision: str) -> IntentRecord:
    return IntentRecord(
        spec_hash=intent.spec_hash, name=intent.name, service=intent.service,
        command=intent.command, window=intent.window, canonical=intent.canonical,
        status=S.SUBMITTING, attempts=0, retry_base=0, operation_id=None, service_id=None,
        first_submitted_at=None, attempt_started_at=None, next_attempt_at=None,
        next_poll_at=None, poll_count=0, last_error=None, retired=None, revision=revision,
        created_at=now, updated_at=now, succeeded_at=None)


def _settle(rec: IntentRecord, state: IntentState, now: datetime, error: Error) -> IntentRecord:
    """``rec`` ended its attempt in ``state`` (failed or stalled) with ``error``."""
    return replace(rec, status=state, next_attempt_at=None, next_poll_at=None,
                   last_error=error, updated_at=now)


def _change(rec: IntentRecord, status: str, **values: Any) -> OperationChange:
    return OperationChange(rec.spec_hash, rec.current_attempt, status, **values)


def _since_attempt(rec: IntentRecord, now: datetime) -> float | None:
    start = rec.attempt_started_at
    return max(0.0, (now - start).total_seconds()) if start is not None else None


def _event(rec: IntentRecord, state: str, previous: str | None, **extra: Any) -> Transition:
    extra.setdefault("operation_id", rec.operation_id)
    return Transition(name=rec.name, service=rec.service, command=rec.command,
                      spec_hash=rec.spec_hash, state=str(state),
                      previous=str(previous) if previous is not None else None,
                      attempt=rec.attempts if rec.attempts else None,  # 1-based
                      revision=rec.revision, **extra)


_ANY = frozenset({None, *RECORDED})
_LOOKED_AT = frozenset({*IN_FLIGHT, S.LOST, S.STALLED, S.FAILED})
_Rule = tuple[frozenset[IntentState | None], Callable[[IntentRecord | None, Any, datetime], Step]]
_RULES: dict[type, _Rule] = {
    Claimed: (frozenset({None, S.FAILED, S.SUBMITTING}), _claimed),
    Accepted: (frozenset({S.SUBMITTING}), _accepted),
    Deferred: (frozenset(IN_FLIGHT), _deferred),
    Refused: (frozenset({S.SUBMITTING}), _refused),
    NeverArrived: (frozenset({S.SUBMITTING}), _never_arrived),
    ObservedPending: (_LOOKED_AT, _observed_pending),
    ObservedSucceeded: (_LOOKED_AT, _observed_succeeded),
    ObservedFailed: (_LOOKED_AT, _observed_failed),
    NotVisible: (frozenset({S.PENDING}), _not_visible),
    Lost: (frozenset({S.PENDING}), _lost),
    TimedOut: (frozenset({S.PENDING}), _timed_out),
    GaveUp: (frozenset({S.FAILED}), _gave_up),
    Unresolvable: (_ANY, _unresolvable),
    Retired: (frozenset(RECORDED), _retired),
    Revived: (frozenset(RECORDED), _revived),
    RetryRequested: (frozenset(SETTLED_BAD), _retry_requested),
}
