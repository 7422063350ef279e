"""Helpers of the planner tests: commands, recorded intents built directly, plan lookups.

The planner reads :class:`IntentRecord` values only, so its tests build them here as plain
frozen values, no store involved. The builders are named for the state they leave an
intent in, with the fields the store would hold after the same story:

* :func:`in_sync`, :func:`submitting`, :func:`pending`, :func:`failed`, :func:`stalled`:
  one attempt (or ``attempts``) in that state;
* :func:`failures`: ``count`` attempts that each failed, the last one scheduling a retry;
* :func:`with_fresh_budget`: what ``reconciler retry`` makes of a failed or stalled intent;
* :func:`record`: any combination, for generated states (hypothesis).

``tests/test_store.py`` also imports :data:`T0`, :func:`command` and the duration helpers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from reconciler.model.lifecycle import IntentState
from reconciler.model.manifest import Once, Policy, RetryPolicy, ServiceCommand, ServiceRef
from reconciler.model.records import IntentRecord
from reconciler.planning.planner import Action, Limits, Plan, View, desired_intent, plan

#: a fixed "now": Wednesday 2024-05-01 12:00 UTC
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SERVICE = "6f1c2a4e-0000-4000-8000-00000000aaaa"
OTHER_SERVICE = "6f1c2a4e-0000-4000-8000-00000000bbbb"
RETRY = RetryPolicy(limit=2, backoff=timedelta(seconds=10), max_backoff=timedelta(minutes=1))
TIMEOUT = timedelta(minutes=30)
#: how far apart :func:`failures` makes its attempts
ATTEMPT_SPACING = timedelta(seconds=30)
REVISION = "rev-1"
ERROR = {"title": "Boom", "detail": "it broke"}


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def command(
    name: str = "a",
    *,
    service: str = SERVICE,
    cmd: str = "reindex",
    payload: Mapping[str, Any] | None = None,
    policy: Policy | None = None,
    rerun: str = "",
    retry: RetryPolicy = RETRY,
    timeout: timedelta = TIMEOUT,
    depends_on: Sequence[str] = (),
    suspend: bool = False,
) -> ServiceCommand:
    """A valid ServiceCommand; the payload defaults to ``{"table": name}``."""
    return ServiceCommand(
        name=name,
        service=ServiceRef(id=service),
        command=cmd,
        payload=MappingProxyType(dict(payload if payload is not None else {"table": name})),
        policy=policy if policy is not None else Once(),
        rerun=rerun,
        retry=retry,
        timeout=timeout,
        depends_on=tuple(depends_on),
        suspend=suspend,
    )


# ------------------------------------------------------------------ recorded intents


def record(
    cmd: ServiceCommand,
    status: IntentState,
    *,
    now: datetime = T0,
    attempts: int = 1,
    retry_base: int = 0,
    first_submitted_at: datetime | None = None,
    attempt_started_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
    next_poll_at: datetime | None = None,
    poll_count: int = 0,
    operation_id: str | None = None,
    last_error: Mapping[str, Any] | None = None,
    retired: str | None = None,
    updated_at: datetime | None = None,
) -> IntentRecord:
    """The recorded intent ``cmd`` asks for at ``now`` (its window), in ``status``.

    Without ``attempts`` nothing was submitted; otherwise the first submission defaults
    to a minute before ``now`` and the latest attempt started then too, under its
    deterministic operation id (or ``operation_id``, the one the server answered with)."""
    want = desired_intent(cmd, now)
    submitted = first_submitted_at if first_submitted_at is not None else now - minutes(1)
    changed = updated_at if updated_at is not None else now
    return IntentRecord(
        spec_hash=want.spec_hash,
        name=cmd.name,
        service=cmd.service.label,
        command=cmd.command,
        window=want.window,
        canonical=want.canonical,
        status=status,
        attempts=attempts,
        retry_base=retry_base,
        operation_id=(operation_id or want.operation_id(attempts - 1)) if attempts else None,
        service_id=cmd.service.id,
        first_submitted_at=submitted if attempts else None,
        attempt_started_at=(attempt_started_at or submitted) if attempts else None,
        next_attempt_at=next_attempt_at,
        next_poll_at=next_poll_at,
        poll_count=poll_count,
        last_error=last_error,
        retired=retired,
        revision=REVISION,
        created_at=submitted,
        updated_at=changed,
        succeeded_at=changed if status == IntentState.IN_SYNC else None,
    )


def in_sync(cmd: ServiceCommand, *, at: datetime, now: datetime = T0) -> IntentRecord:
    """One whole successful attempt submitted at ``at`` (done 5 s later), of the intent
    ``cmd`` asks for at ``now``."""
    return record(cmd, IntentState.IN_SYNC, now=now, first_submitted_at=at,
                  updated_at=at + seconds(5))


def submitting(cmd: ServiceCommand, *, at: datetime, lookup_at: datetime | None = None,
               now: datetime = T0) -> IntentRecord:
    """Attempt 0 recorded write-ahead at ``at``, its outcome unknown; ``lookup_at``: its
    lookup was deferred to then."""
    return record(cmd, IntentState.SUBMITTING, now=now, first_submitted_at=at,
                  next_poll_at=lookup_at, poll_count=0 if lookup_at is None else 1,
                  updated_at=at)


def pending(cmd: ServiceCommand, *, at: datetime, poll_at: datetime,
            first_submitted_at: datetime | None = None, attempts: int = 1,
            server_id: str | None = None, now: datetime = T0) -> IntentRecord:
    """Attempt ``attempts - 1``, submitted at ``at`` and accepted by the server (under
    ``server_id`` if it chose one), next polled at ``poll_at``. ``first_submitted_at``:
    when an earlier attempt was first submitted (default ``at``)."""
    return record(cmd, IntentState.PENDING, now=now, attempts=attempts,
                  first_submitted_at=first_submitted_at or at, attempt_started_at=at,
                  next_poll_at=poll_at, operation_id=server_id, updated_at=at)


def failed(cmd: ServiceCommand, *, at: datetime, retry_at: datetime,
           failed_at: datetime | None = None, now: datetime = T0) -> IntentRecord:
    """Attempt 0, submitted at ``at``, failed (at ``failed_at``); retry at ``retry_at``."""
    return record(cmd, IntentState.FAILED, now=now, first_submitted_at=at,
                  next_attempt_at=retry_at, last_error=ERROR, updated_at=failed_at or at)


def stalled(cmd: ServiceCommand, *, at: datetime, title: str = "Boom", attempts: int = 1,
            now: datetime = T0) -> IntentRecord:
    """``attempts`` attempts, the first submitted at ``at``, the last one failed with no
    retry left (error ``title``)."""
    return record(cmd, IntentState.STALLED, now=now, attempts=attempts, first_submitted_at=at,
                  last_error={**ERROR, "title": title}, updated_at=at)


def failures(cmd: ServiceCommand, count: int, *, since: datetime,
             every: timedelta = ATTEMPT_SPACING, now: datetime = T0) -> IntentRecord:
    """``count`` attempts, the first submitted at ``since`` and each ``every`` after the
    previous one, that each failed a second after it started; the last one scheduled a
    retry 20 s after it started."""
    last = since + every * (count - 1)
    return record(cmd, IntentState.FAILED, now=now, attempts=count, first_submitted_at=since,
                  attempt_started_at=last, next_attempt_at=last + seconds(20),
                  last_error=ERROR, updated_at=last + seconds(1))


def with_fresh_budget(rec: IntentRecord, *, at: datetime) -> IntentRecord:
    """``rec`` after ``reconciler retry`` at ``at``: failed, due then, with a fresh retry
    budget (``retry_base`` = its attempts) and deadline (no first submission)."""
    return replace(rec, status=IntentState.FAILED, retry_base=rec.attempts,
                   first_submitted_at=None, next_attempt_at=at, updated_at=at)


def recorded(*records: IntentRecord) -> dict[str, IntentRecord]:
    return {r.spec_hash: r for r in records}


# ------------------------------------------------------------------ reading a plan


def planned(commands: Sequence[ServiceCommand], records: Mapping[str, IntentRecord],
            now: datetime = T0, limits: Limits | None = None) -> Plan:
    return plan(commands, records, now, limits=limits)


def actions_of(result: Plan, name: str) -> list[Action]:
    return [a for a in result.actions if a.name == name]


def only(result: Plan, name: str) -> Action:
    """The one action planned for manifest ``name``."""
    found = actions_of(result, name)
    assert len(found) == 1, f"expected one action for {name}, got {found}"
    return found[0]


def only_kind(result: Plan, kind: str) -> Action:
    """The one action of ``kind`` in the plan."""
    found = [a for a in result.actions if a.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {found}"
    return found[0]


def view(result: Plan, name: str) -> View:
    found = [v for v in result.views if v.name == name]
    assert len(found) == 1, f"expected one view of {name}, got {found}"
    return found[0]


def kinds(result: Plan) -> list[tuple[str, str]]:
    return [(a.kind, a.name) for a in result.actions]
