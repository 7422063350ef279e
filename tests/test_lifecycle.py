"""The lifecycle of one intent: each row of the transition table, pure (no store, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.model.lifecycle import (
    SETTLED_BAD,
    Accepted,
    Claimed,
    Deferred,
    GaveUp,
    IntentState,
    InvalidTransition,
    Lost,
    NeverArrived,
    NotVisible,
    ObservedFailed,
    ObservedPending,
    ObservedSucceeded,
    OperationStatus,
    Refused,
    Retired,
    RetryRequested,
    Revived,
    TimedOut,
    Unresolvable,
    transition,
)
from reconciler.model.records import IntentRecord, NewIntent

T0 = datetime(2026, 1, 1, tzinfo=UTC)
INTENT = NewIntent("h" * 64, "job", "svc", "reindex", "", "{}")
S = IntentState


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claimed(attempt: int = 0, at: datetime = T0) -> IntentRecord:
    step = transition(None, Claimed(INTENT, attempt, f"op-{attempt}", "svc-id", "rev"), at)
    assert step.record is not None
    return step.record


def pending() -> IntentRecord:
    rec = transition(claimed(), Accepted("op-0", later(1)), T0).record
    assert rec is not None
    return rec


def failed() -> IntentRecord:
    rec = transition(pending(), ObservedFailed("op-0", {"title": "x"}, later(60)), later(5))
    assert rec.record is not None
    return rec.record


def stalled() -> IntentRecord:
    rec = transition(pending(), ObservedFailed("op-0", {"title": "x"}, None), later(5)).record
    assert rec is not None
    return rec


def test_a_claim_records_the_attempt_as_submitting_before_its_post():
    step = transition(None, Claimed(INTENT, 0, "op-0", "svc-id", "rev"), T0)
    assert step.record is not None
    assert (step.record.status, step.record.attempts, step.record.operation_id) == (
        S.SUBMITTING, 1, "op-0")
    assert step.new_operation is not None
    assert step.new_operation.status == OperationStatus.SUBMITTING
    assert step.transition is not None and step.transition.state == "submitting"


def test_an_adopted_claim_tells_no_listener():
    step = transition(None, Claimed(INTENT, 0, "op-0", None, "rev", adopted=True), T0)
    assert step.transition is None and step.new_operation is not None


def test_a_retry_claim_keeps_the_first_submission_time():
    rec = transition(failed(), Claimed(INTENT, 1, "op-1", "svc-id", "rev"), later(60)).record
    assert rec is not None
    assert (rec.attempts, rec.first_submitted_at, rec.attempt_started_at) == (2, T0, later(60))


def test_a_202_makes_the_intent_pending_with_the_id_the_server_named():
    step = transition(claimed(), Accepted("server-id", later(1)), T0)
    assert step.record is not None and step.record.status == S.PENDING
    assert step.record.operation_id == "server-id"
    assert step.operation_change is not None
    assert step.operation_change.operation_id == "server-id"


def test_a_deferral_keeps_the_state_and_counts_the_look():
    step = transition(pending(), Deferred(later(9), {"title": "Unavailable"}), later(1))
    assert step.record is not None
    assert (step.record.status, step.record.poll_count, step.record.next_poll_at) == (
        S.PENDING, 1, later(9))
    assert step.transition is None


def test_an_unsent_deferral_forgets_when_the_post_was_sent():
    rec = transition(claimed(), Deferred(later(9), unsent=True), T0).record
    assert rec is not None and rec.attempt_started_at is None


def test_a_refusal_stalls_the_intent_and_fails_its_operation():
    step = transition(claimed(), Refused({"title": "Bad Request", "status": 400}), T0)
    assert step.record is not None and step.record.status == S.STALLED
    assert step.operation_change is not None
    assert step.operation_change.status == OperationStatus.FAILED


def test_a_first_attempt_that_never_arrived_unrecords_the_intent():
    step = transition(claimed(), NeverArrived(), later(40))
    assert step.record is None and step.drop_operation == 0


def test_a_retry_that_never_arrived_returns_the_intent_to_failed_due_now():
    retry = transition(failed(), Claimed(INTENT, 1, "op-1", "svc-id", "rev"), later(60)).record
    step = transition(retry, NeverArrived(), later(100))
    assert step.record is not None
    assert (step.record.status, step.record.attempts, step.record.next_attempt_at) == (
        S.FAILED, 1, later(100))
    assert step.drop_operation == 1


def test_a_pending_observation_of_a_pending_intent_tells_no_listener():
    step = transition(pending(), ObservedPending("op-0", later(3), 1), later(1))
    assert step.transition is None
    assert step.record is not None and step.record.poll_count == 1


def test_a_success_puts_the_intent_in_sync_and_measures_the_attempt():
    step = transition(pending(), ObservedSucceeded("op-0", {"rows": 3}), later(7))
    assert step.record is not None and step.record.status == S.IN_SYNC
    assert step.record.succeeded_at == later(7)
    assert step.transition is not None
    assert (step.transition.outcome, step.transition.duration) == ("succeeded", 7.0)


def test_a_failure_with_a_retry_time_is_failed_and_without_one_stalled():
    assert failed().status == S.FAILED and failed().next_attempt_at == later(60)
    assert stalled().status == S.STALLED and stalled().next_attempt_at is None


def test_a_timeout_stalls_and_records_the_operation_as_timed_out():
    step = transition(pending(), TimedOut("not finished within 1h"), later(3600))
    assert step.record is not None and step.record.status == S.STALLED
    assert step.operation_change is not None
    assert step.operation_change.status == OperationStatus.TIMED_OUT
    assert step.transition is not None and step.transition.outcome == "timed_out"


def test_giving_up_stalls_a_failed_intent_without_touching_its_operation():
    step = transition(failed(), GaveUp("retry limit 3 reached"), later(70))
    assert step.record is not None and step.record.status == S.STALLED
    assert step.operation_change is None and step.new_operation is None


def test_an_unresolvable_intent_is_recorded_stalled_with_no_attempt():
    step = transition(None, Unresolvable(INTENT, {"title": "Service not found"}, "rev"), T0)
    assert step.record is not None
    assert (step.record.status, step.record.attempts) == (S.STALLED, 0)
    assert step.transition is not None and step.transition.attempt is None


def test_retiring_keeps_the_state_and_marks_the_record_as_history():
    rec = transition(stalled(), Retired("orphaned"), later(9)).record
    assert rec is not None and (rec.status, rec.retired) == (S.STALLED, "orphaned")


def test_a_requested_retry_gives_a_fresh_budget_and_deadline_due_now():
    rec = transition(stalled(), RetryRequested(), later(99)).record
    assert rec is not None
    assert (rec.status, rec.retry_base, rec.first_submitted_at, rec.next_attempt_at) == (
        S.FAILED, 1, None, later(99))


@pytest.mark.parametrize(("make", "event"), [
    (pending, RetryRequested()),
    (stalled, Accepted("op-0", T0)),
    (failed, TimedOut("late")),
    (pending, GaveUp("no")),
    (stalled, Claimed(INTENT, 1, "op-1", None, "rev")),
])
def test_an_event_the_state_does_not_allow_is_refused(make, event):
    with pytest.raises(InvalidTransition):
        transition(make(), event, T0)


def test_an_event_about_an_unrecorded_intent_is_refused():
    with pytest.raises(InvalidTransition, match="no record"):
        transition(None, Accepted("op-0", T0), T0)


def test_transitions_never_change_the_record_they_are_given():
    rec = pending()
    before = replace(rec)
    transition(rec, ObservedSucceeded("op-0", None), later(5))
    assert rec == before


# ------------------------------------------------------------------ accepted is forever


def test_a_202_marks_the_attempt_accepted():
    assert pending().accepted_at == T0


def test_a_404_of_an_accepted_operation_keeps_it_pending_and_marks_the_first_miss():
    step = transition(pending(), NotVisible(later(3)), later(2))
    assert step.record is not None
    assert (step.record.status, step.record.missing_since) == (S.PENDING, later(2))
    again = transition(step.record, NotVisible(later(9)), later(5)).record
    assert again is not None and again.missing_since == later(2)


def test_seeing_the_operation_again_clears_the_miss():
    missing = transition(pending(), NotVisible(later(3)), later(2)).record
    seen = transition(missing, ObservedPending("op-0", later(9), 1), later(4)).record
    assert seen is not None and seen.missing_since is None


def test_an_operation_invisible_past_the_tolerance_is_lost_and_alerts_like_stalled():
    step = transition(pending(), Lost("not found for 600s"), later(700))
    assert step.record is not None and step.record.status == S.LOST
    assert step.operation_change is not None
    assert step.operation_change.status == OperationStatus.LOST
    assert S.LOST in SETTLED_BAD


def test_a_lost_intent_found_again_by_a_last_look_follows_the_server():
    lost = transition(pending(), Lost("gone"), later(700)).record
    rec = transition(lost, ObservedSucceeded("op-0", None), later(800)).record
    assert rec is not None and rec.status == S.IN_SYNC


def test_a_lost_intent_may_only_be_retried_by_a_human():
    lost = transition(pending(), Lost("gone"), later(700)).record
    with pytest.raises(InvalidTransition):
        transition(lost, Claimed(INTENT, 1, "op-1", None, "rev"), later(800))
    rec = transition(lost, RetryRequested(), later(800)).record
    assert rec is not None and rec.status == S.FAILED


def test_an_unknown_server_status_is_recorded_as_it_came():
    step = transition(pending(), ObservedPending("op-0", later(3), 1, "cancelled"), later(1))
    assert step.operation_change is not None
    assert step.operation_change.status == "cancelled"
    assert step.record is not None and step.record.status == S.PENDING


# ------------------------------------------------------------------ compare-and-set


def test_every_step_expects_the_version_it_was_computed_from():
    first = transition(None, Claimed(INTENT, 0, "op-0", None, "rev"), T0)
    assert (first.expect_version, first.record.version) == (None, 1)
    second = transition(first.record, Accepted("op-0", later(1)), T0)
    assert (second.expect_version, second.record.version) == (1, 2)


def test_a_retired_intent_asked_for_again_is_revived_in_its_state():
    retired = transition(stalled(), Retired("superseded"), later(9)).record
    rec = transition(retired, Revived(), later(10)).record
    assert rec is not None and (rec.status, rec.retired) == (S.STALLED, None)
