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
submitting,        ObservedPending     pending: the server has it and it runs
pending
submitting,        ObservedSucceeded   in_sync
pending
submitting,        ObservedFailed      failed when a retry is due at ``retry_at``, else stalled
pending
pending            TimedOut            stalled: not terminal within the manifest's timeout
failed             GaveUp              stalled: the next attempt cannot come (limit, deadline)
(none), any        Unresolvable        stalled: cannot even be submitted (unknown service)
any                Retired             unchanged state, kept as history (orphaned/superseded)
failed, stalled    RetryRequested      failed, due now, with a fresh retry budget and deadline
=================  ==================  ======================================================

Any other (state, event) pair is a bug of the caller and raises :class:`InvalidTransition`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

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
    "NeverArrived",
    "ObservedFailed",
    "ObservedPending",
    "ObservedSucceeded",
    "OperationChange",
    "OperationStatus",
    "Refused",
    "Retired",
    "RetryRequested",
    "Step",
    "TimedOut",
    "Transition",
    "Unresolvable",
    "transition",
]

Error = Mapping[str, Any]
S = IntentState


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Claimed:
    """Attempt ``attempt`` is recorded as submitting, before its POST (write-ahead)."""

    intent: NewIntent
    attempt: int
    operation_id: str
    service_id: str | None
    revision: str
    #: found on the server by a probe (adoption), not about to be sent: no event
    adopted: bool = False


@dataclass(frozen=True)
class Accepted:
    """The run POST got a 202 naming ``operation_id``; first look at ``next_poll_at``."""

    operation_id: str
    next_poll_at: datetime


@dataclass(frozen=True)
class Deferred:
    """A request could not settle the intent now; try again at ``next_poll_at``."""

    next_poll_at: datetime
    error: Error | None = None
    #: the server certainly did not execute the attempt's run request
    unsent: bool = False


@dataclass(frozen=True)
class Refused:
    """The API refused the run request for good (a 4xx that no retry can fix)."""

    error: Error


@dataclass(frozen=True)
class NeverArrived:
    """A lookup proved the attempt's POST never reached the server, and it is not re-sent."""


@dataclass(frozen=True)
class ObservedPending:
    operation_id: str
    next_poll_at: datetime
    poll_count: int


@dataclass(frozen=True)
class ObservedSucceeded:
    operation_id: str
    result: Mapping[str, Any] | None


@dataclass(frozen=True)
class ObservedFailed:
    """The operation failed; ``retry_at`` is when the next attempt is due (None: stall)."""

    operation_id: str
    error: Error
    retry_at: datetime | None
    reason: str = ""


@dataclass(frozen=True)
class TimedOut:
    reason: str


@dataclass(frozen=True)
class GaveUp:
    reason: str


@dataclass(frozen=True)
class Unresolvable:
    """The intent cannot even be submitted (its service does not exist)."""

    intent: NewIntent
    error: Error
    revision: str


@dataclass(frozen=True)
class Retired:
    why: Literal["orphaned", "superseded"]
    reason: str = ""


@dataclass(frozen=True)
class RetryRequested:
    """A human asked for another try (``reconciler retry NAME``)."""


Event = (Claimed | Accepted | Deferred | Refused | NeverArrived | ObservedPending
         | ObservedSucceeded | ObservedFailed | TimedOut | GaveUp | Unresolvable | Retired
         | RetryRequested)


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
    status: OperationStatus
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
    return apply(record, event, now)


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
                  next_poll_at=e.next_poll_at, poll_count=0, last_error=None, updated_at=now)
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
                  updated_at=now)
    change = _change(rec, OperationStatus.PENDING, operation_id=e.operation_id)
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


def _change(rec: IntentRecord, status: OperationStatus, **values: Any) -> OperationChange:
    return OperationChange(rec.spec_hash, rec.current_attempt, status, **values)


def _since_attempt(rec: IntentRecord, now: datetime) -> float | None:
    start = rec.attempt_started_at
    return max(0.0, (now - start).total_seconds()) if start is not None else None


def _event(rec: IntentRecord, state: str, previous: str | None, **extra: Any) -> Transition:
    extra.setdefault("operation_id", rec.operation_id)
    return Transition(name=rec.name, service=rec.service, command=rec.command,
                      spec_hash=rec.spec_hash, state=str(state),
                      previous=str(previous) if previous is not None else None,
                      attempt=rec.current_attempt if rec.attempts else None,
                      revision=rec.revision, **extra)


_NONE_OR = frozenset({None})
_ANY = frozenset({None, *RECORDED})
_Rule = tuple[frozenset[IntentState | None], Callable[[IntentRecord | None, Any, datetime], Step]]
_RULES: dict[type, _Rule] = {
    Claimed: (frozenset({None, S.FAILED, S.SUBMITTING}), _claimed),
    Accepted: (frozenset({S.SUBMITTING}), _accepted),
    Deferred: (frozenset(IN_FLIGHT), _deferred),
    Refused: (frozenset({S.SUBMITTING}), _refused),
    NeverArrived: (frozenset({S.SUBMITTING}), _never_arrived),
    ObservedPending: (frozenset(IN_FLIGHT), _observed_pending),
    ObservedSucceeded: (frozenset(IN_FLIGHT), _observed_succeeded),
    ObservedFailed: (frozenset(IN_FLIGHT), _observed_failed),
    TimedOut: (frozenset({S.PENDING}), _timed_out),
    GaveUp: (frozenset({S.FAILED}), _gave_up),
    Unresolvable: (_ANY, _unresolvable),
    Retired: (frozenset(RECORDED), _retired),
    RetryRequested: (frozenset(SETTLED_BAD), _retry_requested),
}
