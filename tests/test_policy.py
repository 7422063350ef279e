"""The retry rules (``reconciler.planning.policy``): budget, backoff and deadline.

The manifests here allow 2 retries (3 attempts), back off 10 s doubling up to 1 minute,
and must finish within 30 minutes of their first submission (``plan_support``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from plan_support import T0, command, failures, hours, minutes, record, seconds

from reconciler.model.lifecycle import IntentState
from reconciler.model.manifest import RetryPolicy
from reconciler.planning import policy

A = command("a")  # retry limit 2, backoff 10s doubling up to 1m, timeout 30m
US = timedelta(microseconds=1)


def failed_after(count: int, *, retry_base: int = 0, first_submitted_at=T0,
                 next_attempt_at=None):
    """An intent whose ``count``-th attempt failed, first submitted at
    ``first_submitted_at`` (None: never, or its deadline was reset)."""
    rec = record(A, IntentState.FAILED, attempts=count, retry_base=retry_base,
                 next_attempt_at=next_attempt_at)
    return replace(rec, first_submitted_at=first_submitted_at)


# ------------------------------------------------------------------ retry budget


def test_failures_count_the_attempts_since_the_budget_was_last_reset():
    assert policy.failures(failed_after(5, retry_base=3)) == 2


def test_the_last_allowed_retry_leaves_the_budget_unspent():
    rec = failed_after(2)  # limit 2: the third attempt is the second, last, retry
    assert not policy.retry_budget_spent(rec, A)
    assert policy.retries_left(rec, A) == 1


def test_failures_beyond_the_retry_limit_spend_the_budget():
    rec = failed_after(3)
    assert policy.retry_budget_spent(rec, A)
    assert policy.retries_left(rec, A) == 0


def test_retries_left_never_go_below_zero():
    assert policy.retries_left(failed_after(9), A) == 0


def test_a_reset_budget_allows_the_limit_again_counted_from_the_attempts_made():
    rec = failed_after(3, retry_base=3)
    assert not policy.retry_budget_spent(rec, A)
    assert policy.retries_left(rec, A) == 3
    assert policy.attempts_allowed(rec, A) == 6


@pytest.mark.parametrize("count", range(6))
def test_retries_left_is_zero_exactly_when_the_budget_is_spent(count):
    rec = failed_after(count)
    assert (policy.retries_left(rec, A) == 0) is policy.retry_budget_spent(rec, A)


# ------------------------------------------------------------------ backoff


@pytest.mark.parametrize(
    ("count", "wait"),
    [(1, seconds(10)), (2, seconds(20)), (3, seconds(40))],
)
def test_the_backoff_doubles_with_every_failure(count, wait):
    assert policy.backoff(failed_after(count), A) == wait


def test_the_backoff_is_capped_at_max_backoff():
    assert policy.backoff(failed_after(4), A) == minutes(1)
    assert policy.backoff(failed_after(30), A) == minutes(1)


def test_the_backoff_counts_only_failures_since_the_budget_was_reset():
    assert policy.backoff(failed_after(5, retry_base=4), A) == seconds(10)


def test_an_attempt_due_at_exactly_now_is_no_longer_in_backoff():
    assert policy.in_backoff(failed_after(1, next_attempt_at=T0 + US), T0)
    assert not policy.in_backoff(failed_after(1, next_attempt_at=T0), T0)
    assert not policy.in_backoff(failed_after(1, next_attempt_at=None), T0)


# ------------------------------------------------------------------ deadline


def test_the_deadline_is_the_first_submission_plus_the_timeout():
    assert policy.deadline(failed_after(2), A) == T0 + minutes(30)


def test_an_intent_never_submitted_has_no_deadline_unless_told_where_it_starts():
    rec = failed_after(1, first_submitted_at=None)
    assert policy.deadline(rec, A) is None
    assert policy.deadline(rec, A, unsubmitted_from=T0 + hours(1)) == T0 + hours(1) + minutes(30)


def test_an_intent_no_manifest_asks_for_has_no_deadline():
    assert policy.deadline(failed_after(1), None) is None


def test_reaching_the_deadline_exactly_is_past_it():
    assert policy.past_deadline(T0 + minutes(30), T0 + minutes(30))


def test_one_microsecond_before_the_deadline_is_not_past_it():
    assert not policy.past_deadline(T0 + minutes(30) - US, T0 + minutes(30))


def test_no_deadline_is_never_past():
    assert not policy.past_deadline(T0 + hours(1_000), None)


def test_a_retry_due_exactly_at_the_deadline_is_past_it():
    rec = failed_after(1, next_attempt_at=T0 + minutes(30))
    assert policy.retry_past_deadline(rec, A, T0 + minutes(1))


def test_a_retry_due_one_microsecond_before_the_deadline_is_not_past_it():
    rec = failed_after(1, next_attempt_at=T0 + minutes(30) - US)
    assert not policy.retry_past_deadline(rec, A, T0 + minutes(1))


def test_an_overdue_retry_starts_now_and_so_is_past_the_deadline_once_now_reaches_it():
    rec = failed_after(1, next_attempt_at=T0 + minutes(1))
    assert not policy.retry_past_deadline(rec, A, T0 + minutes(30) - US)
    assert policy.retry_past_deadline(rec, A, T0 + minutes(30))


def test_a_retry_of_an_intent_without_a_first_submission_is_never_past_the_deadline():
    rec = failed_after(1, first_submitted_at=None, next_attempt_at=T0 + hours(5))
    assert not policy.retry_past_deadline(rec, A, T0 + hours(5))


# ------------------------------------------------------------------ next attempt


def test_the_next_attempt_comes_after_the_backoff():
    now = T0 + minutes(1)
    assert policy.next_attempt_at(failed_after(2), A, now) == now + seconds(20)


def test_no_next_attempt_once_the_budget_is_spent():
    assert policy.next_attempt_at(failed_after(3), A, T0 + minutes(1)) is None


def test_no_next_attempt_for_an_intent_no_manifest_asks_for():
    assert policy.next_attempt_at(failed_after(1), None, T0 + minutes(1)) is None


def test_a_next_attempt_that_would_start_exactly_at_the_deadline_is_none():
    now = T0 + minutes(30) - seconds(10)  # + 10 s backoff = the deadline
    assert policy.next_attempt_at(failed_after(1), A, now) is None


def test_a_next_attempt_one_microsecond_before_the_deadline_is_made():
    now = T0 + minutes(30) - seconds(10) - US
    assert policy.next_attempt_at(failed_after(1), A, now) == T0 + minutes(30) - US


def test_a_next_attempt_of_an_intent_without_a_first_submission_counts_its_deadline_from_now():
    rec = failed_after(1, first_submitted_at=None)
    assert policy.next_attempt_at(rec, A, T0 + hours(5)) == T0 + hours(5) + seconds(10)
    short = command("a", timeout=seconds(10))
    assert policy.next_attempt_at(rec, short, T0 + hours(5)) is None


def test_the_next_attempt_after_a_story_of_failures_is_the_capped_backoff():
    slow = command("a", retry=RetryPolicy(limit=9, backoff=seconds(10), max_backoff=seconds(30)))
    rec = failures(slow, 4, since=T0 - minutes(5))
    assert policy.next_attempt_at(rec, slow, T0) == T0 + seconds(30)
