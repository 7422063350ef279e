"""The retry rules, one copy each: retry budget, backoff and deadline.

Small pure functions of a recorded intent and its manifest. The planner decides with them
when a failed intent is retried, waits or gives up; :func:`next_attempt_at` is the rule
for scheduling the retry after a failure (the engine's ``_next_attempt``).

Counting: ``failures`` are the attempts made since the retry budget was last reset
(``reconciler retry`` sets ``retry_base`` to the attempts made so far). A manifest with
``retry.limit`` = n allows n + 1 attempts per budget: the first and n retries.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler.model.manifest import ServiceCommand
from reconciler.model.records import IntentRecord

__all__ = [
    "attempts_allowed",
    "backoff",
    "deadline",
    "failures",
    "in_backoff",
    "next_attempt_at",
    "past_deadline",
    "retries_left",
    "retry_budget_spent",
    "retry_past_deadline",
]


def failures(rec: IntentRecord) -> int:
    """Attempts made since the retry budget was last reset: ``attempts - retry_base``."""
    return rec.attempts - rec.retry_base


def attempts_allowed(rec: IntentRecord, command: ServiceCommand) -> int:
    """The number the last allowed attempt has (1-based):
    ``retry_base + retry.limit + 1``."""
    return rec.retry_base + command.retry.limit + 1


def retries_left(rec: IntentRecord, command: ServiceCommand) -> int:
    """Attempts still allowed: ``retry.limit + 1 - failures``, never below 0. It is 0
    exactly when :func:`retry_budget_spent` is true."""
    return max(0, attempts_allowed(rec, command) - rec.attempts)


def retry_budget_spent(rec: IntentRecord, command: ServiceCommand) -> bool:
    """No attempt is left: ``failures(rec) > retry.limit`` (strictly greater, so with
    limit n the (n + 1)-th attempt, the n-th retry, is still made)."""
    return failures(rec) > command.retry.limit


def backoff(rec: IntentRecord, command: ServiceCommand) -> timedelta:
    """The wait after the latest failure: ``retry.backoff * 2 ** (failures - 1)``, capped
    at ``retry.max_backoff`` (:meth:`RetryPolicy.delay`)."""
    return command.retry.delay(failures(rec))


def in_backoff(rec: IntentRecord, now: datetime) -> bool:
    """The recorded next attempt is still to come: ``next_attempt_at > now`` (strictly:
    an attempt due at exactly ``now`` is due)."""
    return rec.next_attempt_at is not None and rec.next_attempt_at > now


def deadline(rec: IntentRecord, command: ServiceCommand | None, *,
             unsubmitted_from: datetime | None = None) -> datetime | None:
    """The moment by which the intent must have finished: its first submission plus the
    manifest's ``timeout``, however many attempts it took.

    None when no manifest asks for the intent any more (``command`` None: it is only
    followed to its end), and when it has no first submission (never submitted, or its
    deadline was reset by ``reconciler retry``) unless ``unsubmitted_from`` is given: then
    the deadline counts from that moment instead."""
    if command is None:
        return None
    start = rec.first_submitted_at if rec.first_submitted_at is not None else unsubmitted_from
    return start + command.timeout if start is not None else None


def past_deadline(at: datetime, limit: datetime | None) -> bool:
    """Whether ``at`` is too late for the deadline ``limit``: ``at >= limit`` (reaching
    the deadline exactly is too late; one microsecond before is not). No deadline (None)
    is never passed."""
    return limit is not None and at >= limit


def retry_past_deadline(rec: IntentRecord, command: ServiceCommand, now: datetime) -> bool:
    """The next attempt of a failed intent would start too late: it starts at
    ``max(next_attempt_at or now, now)`` (a retry overdue since before ``now`` starts
    now), and that is :func:`past_deadline` of :func:`deadline` (no deadline for an
    intent without a first submission)."""
    starts = max(rec.next_attempt_at or now, now)
    return past_deadline(starts, deadline(rec, command))


def next_attempt_at(rec: IntentRecord, command: ServiceCommand | None,
                    now: datetime) -> datetime | None:
    """When to retry after the failure of ``rec``'s latest attempt, recorded at ``now``;
    None: stall.

    None when no manifest asks for it (``command`` None), when :func:`retry_budget_spent`,
    or when ``now +`` :func:`backoff` is :func:`past_deadline` (``at >= first submission +
    timeout``; an intent without a first submission counts its deadline from ``now``)."""
    if command is None or retry_budget_spent(rec, command):
        return None
    at = now + backoff(rec, command)
    if past_deadline(at, deadline(rec, command, unsubmitted_from=now)):
        return None
    return at
