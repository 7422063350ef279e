"""Helpers of the planner and store tests: commands, recorded intents, plan lookups.

Two ways to give the planner a recorded state:

* :class:`Ledger` drives a real ``Store(":memory:")`` through the same transitions the
  engine makes (``submitted`` -> ``accepted`` -> ``succeeded`` | ``failed`` ...), so a test
  reads like the story of an intent;
* :func:`record` builds an :class:`IntentRecord` directly, for generated states
  (hypothesis) and for states the store cannot reach on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from reconciler.model.manifest import Once, Policy, RetryPolicy, ServiceCommand, ServiceRef
from reconciler.model.records import IntentRecord, IntentStatus
from reconciler.planning.planner import Action, Desired, Limits, Plan, View, desired_intent, plan
from reconciler.store.sqlite import Store

#: a fixed "now": Wednesday 2024-05-01 12:00 UTC
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SERVICE = "6f1c2a4e-0000-4000-8000-00000000aaaa"
OTHER_SERVICE = "6f1c2a4e-0000-4000-8000-00000000bbbb"
RETRY = RetryPolicy(limit=2, backoff=timedelta(seconds=10), max_backoff=timedelta(minutes=1))
TIMEOUT = timedelta(minutes=30)
#: how far apart :meth:`Ledger.failures` makes its attempts
ATTEMPT_SPACING = timedelta(seconds=30)
REVISION = "rev-1"


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


def record(
    cmd: ServiceCommand,
    status: IntentStatus,
    *,
    now: datetime = T0,
    attempts: int = 1,
    retry_base: int = 0,
    first_submitted_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
    next_poll_at: datetime | None = None,
    last_error: Mapping[str, Any] | None = None,
    retired: str | None = None,
) -> IntentRecord:
    """The recorded intent ``cmd`` asks for at ``now`` (its window), in ``status``."""
    want = desired_intent(cmd, now)
    submitted = first_submitted_at if first_submitted_at is not None else now - minutes(1)
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
        operation_id=want.operation_id(attempts - 1) if attempts else None,
        service_id=cmd.service.id,
        first_submitted_at=submitted if attempts else None,
        attempt_started_at=submitted if attempts else None,
        next_attempt_at=next_attempt_at,
        next_poll_at=next_poll_at,
        poll_count=0,
        last_error=last_error,
        retired=retired,
        revision=REVISION,
        created_at=submitted,
        updated_at=now,
        succeeded_at=now if status == "succeeded" else None,
    )


def recorded(*records: IntentRecord) -> dict[str, IntentRecord]:
    return {r.spec_hash: r for r in records}


class Ledger:
    """A real in-memory store, driven through the engine's transitions."""

    def __init__(self, store: Store | None = None, *, retention: int = 50) -> None:
        self.store = store if store is not None else Store(":memory:", retention=retention)

    @property
    def records(self) -> dict[str, IntentRecord]:
        return self.store.intents()

    def intent(self, want: Desired) -> IntentRecord:
        rec = self.store.intent(want.spec_hash)
        assert rec is not None, f"{want.name} is not recorded"
        return rec

    def submitted(self, want: Desired, at: datetime, *, attempt: int | None = None) -> None:
        """Write-ahead record of the next attempt (or ``attempt``) as ``submitting``."""
        if attempt is None:
            rec = self.store.intent(want.spec_hash)
            attempt = rec.attempts if rec is not None else 0
        self.store.begin_attempt(want.new_intent(), attempt=attempt,
                                 operation_id=want.operation_id(attempt),
                                 service_id=want.command.service.id, now=at,
                                 revision=REVISION)

    def accepted(self, want: Desired, at: datetime, *, poll_at: datetime | None = None,
                 server_id: str | None = None) -> None:
        """The server answered 202 (with ``server_id``, or the id that was sent)."""
        sent = self.intent(want).operation_id
        assert sent is not None
        self.store.mark_pending(want.spec_hash, operation_id=server_id or sent,
                                sent_operation_id=sent, now=at,
                                next_poll_at=poll_at or at + seconds(1))

    def succeeded(self, want: Desired, at: datetime) -> None:
        op = self.intent(want).operation_id
        assert op is not None
        self.store.mark_succeeded(want.spec_hash, operation_id=op, now=at,
                                  result={"ok": True})

    def failed(self, want: Desired, at: datetime, *, retry_at: datetime | None,
               title: str = "Boom") -> None:
        """The attempt failed: retry at ``retry_at``, or stall when it is None."""
        self.store.mark_failed(want.spec_hash, operation_id=self.intent(want).operation_id,
                               now=at, error={"title": title, "detail": "it broke"},
                               next_attempt_at=retry_at)

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

