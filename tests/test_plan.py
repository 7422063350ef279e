"""The planner: ``plan(desired, recorded, now) -> Plan``, pure and table-driven.

Each test states one decision of the planner for one recorded state (DESIGN section 4);
the records are built directly (``plan_support``), no store involved. The hypothesis tests
at the end check the safety invariants over generated states.
"""

from __future__ import annotations

import ast
import copy
import re
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_support import (
    OTHER_SERVICE,
    SERVICE,
    T0,
    actions_of,
    command,
    failed,
    failures,
    hours,
    in_sync,
    kinds,
    minutes,
    only,
    only_kind,
    pending,
    planned,
    record,
    recorded,
    seconds,
    stalled,
    submitting,
    view,
    with_fresh_budget,
)

import reconciler.planning
from reconciler.errors import Problem
from reconciler.model.identity import operation_id
from reconciler.model.lifecycle import IntentState
from reconciler.model.manifest import Hold, HoldReason, Interval, Once, Schedule
from reconciler.planning.planner import CHANGE_KINDS, Action, Limits, desired_intent, plan

A = command("a")


# ------------------------------------------------------------------ a new intent


def test_a_new_intent_is_submitted_as_attempt_zero_with_its_deterministic_operation_id():
    result = planned([A], {})
    action = only(result, "a")
    want = desired_intent(A, T0)
    assert action.kind == "submit"
    assert action.attempt == 0
    assert action.spec_hash == want.spec_hash
    assert action.operation_id == operation_id(want.spec_hash, 0)


def test_a_new_intent_being_submitted_is_reported_as_submitting():
    assert view(planned([A], {}), "a").state == "submitting"


def test_a_new_intent_is_planned_identically_by_any_replica():
    assert planned([command("a")], {}) == planned([command("a")], {})


# ------------------------------------------------------------------ recorded states


def test_a_succeeded_intent_is_in_sync():
    result = planned([A], recorded(in_sync(A, at=T0 - minutes(5))))
    assert only(result, "a").kind == "noop"
    assert only(result, "a").reason == "in sync"
    assert view(result, "a").state == "in_sync"
    assert view(result, "a").settled


def test_a_succeeded_intent_executes_nothing():
    result = planned([A], recorded(in_sync(A, at=T0 - minutes(5))))
    assert result.executable == ()
    assert result.changes == ()


def test_a_pending_intent_whose_poll_is_due_is_polled():
    want = desired_intent(A, T0)
    rec = pending(A, at=T0 - seconds(10), poll_at=T0 - seconds(1))
    action = only(planned([A], recorded(rec)), "a")
    assert action.kind == "poll"
    assert action.operation_id == want.operation_id(0)
    assert action.attempt == 0


def test_a_pending_intent_whose_poll_is_not_due_waits_for_it():
    rec = pending(A, at=T0 - seconds(10), poll_at=T0 + seconds(4))
    result = planned([A], recorded(rec))
    assert only(result, "a").kind == "noop"
    assert only(result, "a").at == T0 + seconds(4)
    assert view(result, "a").state == "pending"


def test_a_pending_intent_whose_poll_is_not_due_wakes_the_planner_at_its_poll():
    rec = pending(A, at=T0 - seconds(10), poll_at=T0 + seconds(4))
    assert planned([A], recorded(rec)).wake_at == T0 + seconds(4)


def test_a_pending_intent_is_polled_under_the_id_the_server_answered_with():
    rec = pending(A, at=T0 - seconds(10), poll_at=T0, server_id="server-chosen")
    assert only(planned([A], recorded(rec)), "a").operation_id == "server-chosen"


def test_a_submitting_intent_is_resolved_before_anything_is_sent_again():
    want = desired_intent(A, T0)
    result = planned([A], recorded(submitting(A, at=T0 - seconds(10))))
    action = only(result, "a")
    assert action.kind == "resolve"
    assert action.may_submit is True
    assert action.operation_id == want.operation_id(0)
    assert view(result, "a").state == "submitting"


def test_a_submitting_intent_whose_lookup_was_deferred_waits_for_it():
    rec = submitting(A, at=T0 - seconds(10), lookup_at=T0 + seconds(3))
    result = planned([A], recorded(rec))
    assert only(result, "a").kind == "noop"
    assert result.wake_at == T0 + seconds(3)


def test_a_submitting_intent_of_a_suspended_manifest_is_resolved_but_never_resent():
    rec = submitting(A, at=T0 - seconds(10))
    action = only(planned([replace(A, suspend=True)], recorded(rec)), "a")
    assert action.kind == "resolve"
    assert action.may_submit is False


def test_a_submitting_intent_of_a_removed_manifest_is_resolved_but_never_resent():
    result = planned([], recorded(submitting(A, at=T0 - seconds(10))))
    action = only(result, "a")
    assert action.kind == "resolve"
    assert action.may_submit is False
    assert view(result, "a").state == "orphaned"


# ------------------------------------------------------------------ failures, retries


def test_a_failed_intent_waits_for_its_backoff():
    rec = failed(A, at=T0 - seconds(30), failed_at=T0 - seconds(5), retry_at=T0 + seconds(5))
    result = planned([A], recorded(rec))
    action = only(result, "a")
    assert action.kind == "wait-backoff"
    assert action.at == T0 + seconds(5)
    assert view(result, "a").state == "failed"


def test_a_failed_intent_wakes_the_planner_when_its_backoff_ends():
    rec = failed(A, at=T0 - seconds(30), failed_at=T0 - seconds(5), retry_at=T0 + seconds(5))
    assert planned([A], recorded(rec)).wake_at == T0 + seconds(5)


def test_a_failed_intent_is_retried_once_its_backoff_elapsed_with_the_next_attempt_number():
    want = desired_intent(A, T0)
    action = only(planned([A], recorded(failures(A, 1, since=T0 - minutes(1)))), "a")
    assert action.kind == "retry"
    assert action.attempt == 1
    assert action.operation_id == operation_id(want.spec_hash, 1)


def test_the_last_allowed_retry_is_still_made():
    rec = failures(A, 2, since=T0 - minutes(2))  # retry limit 2: three attempts in all
    action = only(planned([A], recorded(rec)), "a")
    assert (action.kind, action.attempt) == ("retry", 2)


def test_failures_beyond_the_retry_limit_give_up():
    result = planned([A], recorded(failures(A, 3, since=T0 - minutes(3))))
    assert only(result, "a").kind == "give-up"
    assert view(result, "a").state == "stalled"
    assert view(result, "a").settled


def test_a_next_attempt_scheduled_past_the_deadline_gives_up():
    rec = failed(A, at=T0 - minutes(25), failed_at=T0 - minutes(1),
                 retry_at=T0 - minutes(25) + minutes(31))
    result = planned([A], recorded(rec))
    assert only(result, "a").kind == "give-up"
    assert "deadline" in only(result, "a").reason
    assert "30m" in only(result, "a").reason


def test_a_retry_that_falls_due_after_the_deadline_gives_up_instead_of_running_late():
    # the retry was due before the deadline, but the controller was down until after it
    rec = failed(A, at=T0 - hours(2), failed_at=T0 - hours(2) + minutes(1),
                 retry_at=T0 - hours(2) + minutes(2))
    assert only(planned([A], recorded(rec)), "a").kind == "give-up"


def test_a_pending_intent_past_its_deadline_times_out():
    want = desired_intent(A, T0)
    rec = pending(A, at=T0 - minutes(30), poll_at=T0 + seconds(10))
    result = planned([A], recorded(rec))
    action = only(result, "a")
    assert action.kind == "timeout"
    assert action.operation_id == want.operation_id(0)
    assert view(result, "a").state == "stalled"


def test_the_deadline_counts_from_the_first_submission_not_the_latest_attempt():
    # attempt 0 was first submitted 31 minutes ago and failed; attempt 1 runs since 5
    rec = pending(A, at=T0 - minutes(5), poll_at=T0 + seconds(10),
                  first_submitted_at=T0 - minutes(31), attempts=2)
    assert only(planned([A], recorded(rec)), "a").kind == "timeout"


def test_a_pending_intent_before_its_deadline_wakes_the_planner_at_the_deadline():
    rec = pending(A, at=T0 - minutes(10), poll_at=T0 + hours(1))
    assert planned([A], recorded(rec)).wake_at == T0 + minutes(20)


def test_a_stalled_intent_stays_stalled_and_executes_nothing():
    result = planned([A], recorded(stalled(A, at=T0 - minutes(5), title="Invalid payload")))
    assert only(result, "a").kind == "noop"
    assert view(result, "a").state == "stalled"
    assert result.executable == ()


def test_a_stalled_intent_explains_why_with_its_last_error():
    result = planned([A], recorded(stalled(A, at=T0 - minutes(5), title="Invalid payload")))
    assert view(result, "a").reason == "Invalid payload"


def test_a_stalled_intent_given_a_fresh_budget_is_retried():
    exhausted = stalled(A, at=T0 - hours(2), attempts=3)
    rec = with_fresh_budget(exhausted, at=T0 - seconds(1))
    action = only(planned([A], recorded(rec)), "a")
    assert (action.kind, action.attempt) == ("retry", 3)


# ------------------------------------------------------------------ suspend


def test_a_suspended_new_intent_is_not_submitted():
    result = planned([replace(A, suspend=True)], {})
    assert only(result, "a").kind == "noop"
    assert view(result, "a").state == "suspended"
    assert view(result, "a").settled


def test_a_suspended_failed_intent_is_not_retried():
    rec = failures(A, 1, since=T0 - minutes(1))
    result = planned([replace(A, suspend=True)], recorded(rec))
    assert only(result, "a").kind == "noop"
    assert view(result, "a").state == "suspended"


def test_a_suspended_pending_intent_is_still_polled():
    rec = pending(A, at=T0 - seconds(10), poll_at=T0)
    assert only(planned([replace(A, suspend=True)], recorded(rec)), "a").kind == "poll"


# ------------------------------------------------------------------ dependsOn

B_AFTER_A = command("b", depends_on=["a"])


def test_a_dependent_waits_while_its_dependency_is_not_yet_submitted():
    result = planned([A, B_AFTER_A], {})
    assert only(result, "a").kind == "submit"
    assert only(result, "b").kind == "wait-dependency"
    assert "'a' (not yet submitted)" in only(result, "b").reason
    assert view(result, "b").state == "waiting"


def test_a_dependent_waits_while_its_dependency_is_pending():
    rec = pending(A, at=T0 - seconds(10), poll_at=T0 + seconds(5))
    action = only(planned([A, B_AFTER_A], recorded(rec)), "b")
    assert action.kind == "wait-dependency"
    assert "'a' (pending)" in action.reason


def test_a_dependent_is_submitted_once_its_dependency_succeeded():
    rec = in_sync(A, at=T0 - minutes(5))
    assert only(planned([A, B_AFTER_A], recorded(rec)), "b").kind == "submit"


def test_a_dependent_of_a_stalled_dependency_fails_fast():
    result = planned([A, B_AFTER_A], recorded(stalled(A, at=T0 - minutes(5))))
    assert only(result, "b").kind == "wait-dependency"
    assert view(result, "b").state == "stalled"
    assert view(result, "b").settled


def test_a_dependent_of_a_stalled_dependency_names_it_and_how_to_retry_it():
    result = planned([A, B_AFTER_A], recorded(stalled(A, at=T0 - minutes(5))))
    assert "'a' stalled" in view(result, "b").reason
    assert "reconciler retry a" in view(result, "b").reason


def test_a_stalled_dependency_blocks_its_dependents_transitively():
    c = command("c", depends_on=["b"])
    result = planned([A, B_AFTER_A, c], recorded(stalled(A, at=T0 - minutes(5))))
    assert only(result, "c").kind == "wait-dependency"
    assert view(result, "c").state == "stalled"
    assert "'b' is blocked" in view(result, "c").reason
    assert "'a' stalled" in view(result, "c").reason


def test_a_dependent_of_a_dependency_that_is_not_loaded_waits_naming_it():
    result = planned([B_AFTER_A], {})
    assert only(result, "b").kind == "wait-dependency"
    assert "'a' is not loaded" in only(result, "b").reason


def test_a_dependent_of_a_suspended_dependency_says_so():
    result = planned([replace(A, suspend=True), B_AFTER_A], {})
    assert "'a' (suspended)" in only(result, "b").reason


def test_a_failed_dependent_is_not_retried_while_its_dependency_is_not_succeeded():
    records = recorded(submitting(A, at=T0 - seconds(10)),
                       failures(B_AFTER_A, 1, since=T0 - minutes(1)))
    assert only(planned([A, B_AFTER_A], records), "b").kind == "wait-dependency"


# ------------------------------------------------------------------ spec changes, removal


def test_a_removed_manifest_is_orphaned():
    result = planned([], recorded(in_sync(A, at=T0 - minutes(5))))
    assert only(result, "a").kind == "orphan"
    assert only(result, "a").reason == "manifest removed"
    assert view(result, "a").state == "orphaned"
    assert view(result, "a").settled


def test_an_in_flight_intent_of_a_removed_manifest_is_followed_before_it_is_orphaned():
    result = planned([], recorded(pending(A, at=T0 - seconds(10), poll_at=T0)))
    assert only(result, "a").kind == "poll"
    assert view(result, "a").state == "orphaned"
    assert not view(result, "a").settled


def test_an_in_flight_intent_of_a_removed_manifest_is_never_timed_out():
    rec = pending(A, at=T0 - hours(5), poll_at=T0)
    assert only(planned([], recorded(rec)), "a").kind == "poll"


def test_a_retired_record_is_history_and_gets_no_action():
    rec = record(A, IntentState.IN_SYNC, retired="orphaned")
    result = planned([], recorded(rec))
    assert result.actions == ()
    assert result.views == ()


@pytest.mark.parametrize(
    "change",
    [{"payload": {"table": "other"}}, {"rerun": "2024-05-01"}, {"cmd": "vacuum"}],
    ids=["payload", "rerun", "command"],
)
def test_a_changed_spec_is_a_new_intent_and_the_old_record_is_superseded(change):
    old = desired_intent(A, T0)
    changed = command("a", **change)
    new = desired_intent(changed, T0)
    assert new.spec_hash != old.spec_hash
    result = planned([changed], recorded(in_sync(A, at=T0 - minutes(5))))
    assert kinds(result) == [("submit", "a"), ("orphan", "a")]
    submit, orphan = actions_of(result, "a")
    assert submit.spec_hash == new.spec_hash
    assert orphan.spec_hash == old.spec_hash
    assert orphan.reason == "spec changed; kept as history"
    assert view(result, "a").state == "submitting"


@pytest.mark.parametrize(
    "change",
    [{"timeout": timedelta(hours=3)}, {"depends_on": ["z"]}, {"suspend": True},
     {"retry": replace(A.retry, limit=9)}],
    ids=["timeout", "dependsOn", "suspend", "retry"],
)
def test_a_change_outside_the_identity_keeps_a_succeeded_intent_in_sync(change):
    result = planned([replace(A, **change)], recorded(in_sync(A, at=T0 - minutes(5))))
    assert kinds(result) == [("noop", "a")]


def test_a_new_intent_waits_while_the_previous_run_of_its_manifest_is_in_flight():
    old = desired_intent(A, T0)
    changed = command("a", payload={"table": "other"})
    result = planned([changed], recorded(pending(A, at=T0 - seconds(10), poll_at=T0)))
    new_hash = desired_intent(changed, T0).spec_hash
    assert [(a.kind, a.spec_hash) for a in result.actions] == [
        ("wait-dependency", new_hash), ("poll", old.spec_hash)]
    assert "previous run of this manifest" in only_kind(result, "wait-dependency").reason
    assert view(result, "a").spec_hash == new_hash


OLD_A = command("a", payload={"table": "old"})


def test_a_failed_intent_is_not_retried_while_a_previous_run_of_its_manifest_is_in_flight():
    records = recorded(failures(A, 1, since=T0 - minutes(1)),
                       submitting(OLD_A, at=T0 - seconds(5)))
    result = planned([A], records)
    assert only_kind(result, "wait-dependency").spec_hash == desired_intent(A, T0).spec_hash


def test_a_submitting_previous_run_of_a_changed_manifest_is_resolved_but_never_resent():
    records = recorded(failures(A, 1, since=T0 - minutes(1)),
                       submitting(OLD_A, at=T0 - seconds(5)))
    result = planned([A], records)
    assert only_kind(result, "resolve").may_submit is False


# ------------------------------------------------------------------ interval

HOURLY = Interval(every=hours(1))


def test_an_interval_window_is_its_epoch_aligned_start():
    cmd = command("a", policy=HOURLY)
    now = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)
    want = desired_intent(cmd, now)
    assert want.window == "2024-05-01T12:00:00Z"
    assert want.next_window == datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def test_an_interval_window_of_an_odd_length_is_aligned_to_the_unix_epoch():
    cmd = command("a", policy=Interval(every=minutes(7)))
    now = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)
    start = int(now.timestamp()) // 420 * 420
    assert desired_intent(cmd, now).window == (
        datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_an_interval_run_is_in_sync_until_the_next_window():
    cmd = command("a", policy=HOURLY)
    result = planned([cmd], recorded(in_sync(cmd, at=T0 + minutes(1))), T0 + minutes(30))
    assert kinds(result) == [("noop", "a")]


def test_an_interval_run_in_sync_wakes_the_planner_at_the_next_window():
    cmd = command("a", policy=HOURLY)
    result = planned([cmd], recorded(in_sync(cmd, at=T0 + minutes(1))), T0 + minutes(30))
    assert result.wake_at == T0 + hours(1)


def test_a_new_interval_window_is_a_new_intent_and_the_previous_window_is_superseded():
    cmd = command("a", policy=HOURLY)
    first = desired_intent(cmd, T0)
    result = planned([cmd], recorded(in_sync(cmd, at=T0 + minutes(1))), T0 + hours(1))
    second = desired_intent(cmd, T0 + hours(1))
    assert second.spec_hash != first.spec_hash
    assert [(a.kind, a.spec_hash) for a in result.actions] == [
        ("submit", second.spec_hash), ("orphan", first.spec_hash)]


def test_a_new_interval_window_is_submitted_naming_its_window():
    cmd = command("a", policy=HOURLY)
    result = planned([cmd], recorded(in_sync(cmd, at=T0 + minutes(1))), T0 + hours(1))
    assert only_kind(result, "submit").reason == "new intent for window 2024-05-01T13:00:00Z"


def test_an_interval_run_after_a_long_outage_runs_once_for_the_current_window():
    cmd = command("a", policy=Interval(every=minutes(10)))
    result = planned([cmd], recorded(in_sync(cmd, at=T0)), T0 + timedelta(days=3))
    assert [a.kind for a in result.actions].count("submit") == 1


# ------------------------------------------------------------------ schedule

NIGHTLY = Schedule(cron="0 3 * * *", timezone="UTC", starting_deadline=hours(1))


def test_a_schedule_tick_within_its_starting_deadline_is_submitted_for_that_tick():
    cmd = command("a", policy=NIGHTLY)
    now = datetime(2024, 5, 1, 3, 20, tzinfo=UTC)
    action = only(planned([cmd], {}, now), "a")
    assert action.kind == "submit"
    assert action.spec_hash == desired_intent(cmd, now).spec_hash
    assert desired_intent(cmd, now).window == "2024-05-01T03:00:00Z"


def test_a_schedule_wakes_the_planner_at_its_next_tick():
    cmd = command("a", policy=NIGHTLY)
    result = planned([cmd], {}, datetime(2024, 5, 1, 3, 20, tzinfo=UTC))
    assert result.wake_at == datetime(2024, 5, 2, 3, 0, tzinfo=UTC)


def test_a_schedule_tick_is_due_at_its_exact_moment():
    cmd = command("a", policy=NIGHTLY)
    now = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)
    assert desired_intent(cmd, now).window == "2024-05-01T03:00:00Z"
    assert only(planned([cmd], {}, now), "a").kind == "submit"


def test_a_schedule_tick_just_before_its_moment_is_not_due_and_wakes_the_planner_at_it():
    cmd = command("a", policy=NIGHTLY)
    now = datetime(2024, 5, 1, 2, 59, 59, tzinfo=UTC)
    result = planned([cmd], {}, now)
    assert only(result, "a").kind == "wait-schedule"
    assert result.wake_at == datetime(2024, 5, 1, 3, 0, tzinfo=UTC)


def test_a_schedule_tick_older_than_its_starting_deadline_is_skipped_until_the_next_tick():
    cmd = command("a", policy=NIGHTLY)
    now = datetime(2024, 5, 1, 5, 0, tzinfo=UTC)
    result = planned([cmd], {}, now)
    action = only(result, "a")
    assert action.kind == "wait-schedule"
    assert action.at == datetime(2024, 5, 2, 3, 0, tzinfo=UTC)
    assert "2024-05-01T03:00:00Z missed" in action.reason
    assert view(result, "a").state == "waiting"
    assert view(result, "a").settled
    assert result.changes == ()


LAST_RUN = datetime(2024, 4, 20, 3, 5, tzinfo=UTC)


def test_a_schedule_after_a_long_outage_runs_the_latest_tick_once_and_never_catches_up():
    cmd = command("a", policy=NIGHTLY)
    now = datetime(2024, 5, 1, 3, 30, tzinfo=UTC)
    result = planned([cmd], recorded(in_sync(cmd, at=LAST_RUN, now=LAST_RUN)), now)
    assert [a.kind for a in result.actions] == ["submit", "orphan"]
    assert only_kind(result, "submit").spec_hash == desired_intent(cmd, now).spec_hash


def test_a_schedule_after_a_long_outage_past_the_deadline_runs_nothing():
    cmd = command("a", policy=NIGHTLY)
    result = planned([cmd], recorded(in_sync(cmd, at=LAST_RUN, now=LAST_RUN)),
                     datetime(2024, 5, 1, 9, 0, tzinfo=UTC))
    assert [a.kind for a in result.actions] == ["wait-schedule", "orphan"]


def test_a_schedule_tick_that_already_ran_is_in_sync_even_after_its_deadline():
    cmd = command("a", policy=NIGHTLY)
    tick_run = datetime(2024, 5, 1, 3, 1, tzinfo=UTC)
    result = planned([cmd], recorded(in_sync(cmd, at=tick_run, now=tick_run)),
                     datetime(2024, 5, 1, 20, 0, tzinfo=UTC))
    assert kinds(result) == [("noop", "a")]
    assert view(result, "a").state == "in_sync"


def test_a_schedule_is_read_in_its_time_zone():
    now = datetime(2024, 5, 1, 1, 30, tzinfo=UTC)  # 03:30 in Prague (CEST, UTC+2)
    prague = command("a", policy=replace(NIGHTLY, timezone="Europe/Prague"))
    utc = command("a", policy=NIGHTLY)
    assert desired_intent(prague, now).window == "2024-05-01T01:00:00Z"
    assert desired_intent(utc, now).window == "2024-04-30T03:00:00Z"
    assert only(planned([prague], {}, now), "a").kind == "submit"
    assert only(planned([utc], {}, now), "a").kind == "wait-schedule"


def test_a_schedule_in_a_time_zone_follows_daylight_saving_time():
    prague = command("a", policy=replace(NIGHTLY, timezone="Europe/Prague"))
    winter = desired_intent(prague, datetime(2024, 1, 15, 12, 0, tzinfo=UTC))
    assert winter.window == "2024-01-15T02:00:00Z"  # CET, UTC+1


# ------------------------------------------------------------------ in-flight limits


def test_new_submissions_beyond_max_in_flight_wait_for_capacity():
    cmds = [command(n) for n in "abc"]
    result = planned(cmds, {}, limits=Limits(max_in_flight=2, max_per_service=10))
    assert kinds(result) == [("submit", "a"), ("submit", "b"), ("wait-capacity", "c")]
    assert view(result, "c").state == "waiting"


def test_operations_already_in_flight_count_against_max_in_flight():
    busy = command("x")
    records = recorded(pending(busy, at=T0 - seconds(10), poll_at=T0 + seconds(5)))
    cmds = [command("a"), command("b"), busy]
    result = planned(cmds, records, limits=Limits(max_in_flight=2, max_per_service=10))
    assert kinds(result) == [("submit", "a"), ("wait-capacity", "b"), ("noop", "x")]


def test_an_in_flight_orphan_counts_against_the_limits():
    records = recorded(pending(command("gone"), at=T0 - seconds(10), poll_at=T0 + seconds(5)))
    result = planned([A], records, limits=Limits(max_in_flight=1, max_per_service=10))
    assert only(result, "a").kind == "wait-capacity"


def test_new_submissions_beyond_max_per_service_wait_for_capacity():
    cmds = [command("a"), command("b"), command("c", service=OTHER_SERVICE)]
    result = planned(cmds, {}, limits=Limits(max_in_flight=10, max_per_service=1))
    assert kinds(result) == [("submit", "a"), ("wait-capacity", "b"), ("submit", "c")]
    assert SERVICE in only(result, "b").reason


def test_retries_are_subject_to_the_limits_too():
    busy = command("x")
    records = recorded(failures(A, 1, since=T0 - minutes(1)),
                       submitting(busy, at=T0 - seconds(10)))
    result = planned([A, busy], records, limits=Limits(max_in_flight=1, max_per_service=10))
    assert only(result, "a").kind == "wait-capacity"
    assert only(result, "a").attempt == 1


# ------------------------------------------------------------------ purity, changes

MIXED = [A, command("b"), command("c", depends_on=["a"])]


def mixed_records():
    return recorded(in_sync(A, at=T0 - minutes(5)),
                    failures(command("b"), 1, since=T0 - minutes(2)))


def test_plan_is_deterministic():
    records = mixed_records()
    assert planned(MIXED, records) == planned(MIXED, records)


def test_plan_does_not_mutate_its_inputs():
    records = mixed_records()
    snapshot = copy.deepcopy(records)
    planned(MIXED, records)
    assert records == snapshot


PLANNING_SOURCES = sorted(Path(reconciler.planning.__file__).parent.glob("*.py"))
CLOCK_READS = re.compile(r"\b(?:datetime\.now|utcnow|time\.time|monotonic|today)\b")


@pytest.mark.parametrize("source", PLANNING_SOURCES, ids=lambda p: p.name)
def test_the_planning_package_reads_no_clock(source):
    assert CLOCK_READS.findall(source.read_text()) == []


@pytest.mark.parametrize("source", PLANNING_SOURCES, ids=lambda p: p.name)
def test_the_planning_package_names_states_only_through_intent_state(source):
    states = {s.value for s in IntentState} | {"succeeded"}
    literals = [node.value for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.Constant) and node.value in states]
    assert literals == []


@pytest.mark.parametrize(
    ("kind", "changes"),
    [("submit", True), ("retry", True), ("resolve", True), ("timeout", True),
     ("give-up", True), ("orphan", True), ("poll", False), ("wait-backoff", False),
     ("wait-dependency", False), ("wait-schedule", False), ("wait-capacity", False),
     ("noop", False)],
)
def test_an_action_is_a_change_per_the_documented_table(kind, changes):
    assert Action(kind, "a", "hash").changes is changes
    assert (kind in CHANGE_KINDS) is changes


CHANGES_AND_POLLS = [command("a"), command("b", depends_on=["a"]), command("p")]


def test_plan_changes_lists_the_changes_only():
    records = recorded(pending(command("p"), at=T0 - seconds(10), poll_at=T0))
    result = planned(CHANGES_AND_POLLS, records)
    assert [(a.kind, a.name) for a in result.changes] == [("submit", "a")]


def test_plan_executable_lists_the_changes_and_the_polls():
    records = recorded(pending(command("p"), at=T0 - seconds(10), poll_at=T0))
    result = planned(CHANGES_AND_POLLS, records)
    assert [(a.kind, a.name) for a in result.executable] == [("submit", "a"), ("poll", "p")]


def test_an_action_renders_as_a_dict_for_json_output():
    action = only(planned([A], {}), "a")
    assert action.as_dict() == {
        "action": "submit", "name": "a", "specHash": action.spec_hash,
        "reason": "new intent", "attempt": 0, "operationId": action.operation_id, "at": None,
    }


# ------------------------------------------------------------------ invariants (hypothesis)

NAMES = "abcde"
STATES = (None, IntentState.SUBMITTING, IntentState.PENDING, IntentState.IN_SYNC,
          IntentState.FAILED, IntentState.STALLED)  # None: never recorded
SETTLED_STATES = (None, IntentState.IN_SYNC, IntentState.FAILED, IntentState.STALLED)


@st.composite
def scenarios(draw):
    """Manifests a..e (dependsOn only on earlier ones: no cycles), a recorded state per
    intent, maybe a superseded or removed manifest's record, limits and a ``now``."""
    now = T0 + timedelta(seconds=draw(st.integers(0, 3 * 24 * 3600)))
    chosen = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    chosen.sort()
    cmds, records = [], []

    def state_record(cmd, allow_in_flight=True):
        state = draw(st.sampled_from(STATES if allow_in_flight else SETTLED_STATES))
        if state is None:
            return None
        attempts = draw(st.integers(1, 5))
        first = now - timedelta(minutes=draw(st.integers(0, 120)))
        in_flight = state in (IntentState.SUBMITTING, IntentState.PENDING)
        return record(
            cmd, state, now=now, attempts=attempts,
            retry_base=draw(st.integers(0, attempts)),
            first_submitted_at=first,
            next_attempt_at=(now + timedelta(seconds=draw(st.integers(-600, 600)))
                             if state == IntentState.FAILED else None),
            next_poll_at=(draw(st.none() | st.just(now + timedelta(seconds=5)))
                          if in_flight else None),
        )

    for i, name in enumerate(chosen):
        policy = draw(st.sampled_from([Once(), Interval(every=minutes(10)),
                                       Interval(every=hours(1))]))
        deps = draw(st.lists(st.sampled_from(chosen[:i]), unique=True)) if i else []
        cmd = command(name, policy=policy, depends_on=deps, suspend=draw(st.booleans()),
                      service=draw(st.sampled_from([SERVICE, OTHER_SERVICE])),
                      payload={"v": draw(st.integers(0, 1))})
        cmds.append(cmd)
        current = state_record(cmd)
        if current is not None:
            records.append(current)
        if draw(st.booleans()):  # a superseded record: the other payload
            old = command(name, policy=Once(), service=cmd.service.id or SERVICE,
                          payload={"v": 1 - cmd.payload["v"]})
            previous = state_record(old, allow_in_flight=not (current and current.in_flight))
            if previous is not None:
                records.append(previous)
    if draw(st.booleans()):  # a removed manifest
        gone = state_record(command("gone"))
        if gone is not None:
            records.append(gone)
    limits = Limits(max_in_flight=draw(st.integers(1, 4)), max_per_service=draw(st.integers(1, 3)))
    return cmds, recorded(*records), now, limits


SUBMITS = ("submit", "retry")


def may_post(action: Action) -> bool:
    return action.kind in SUBMITS or (action.kind == "resolve" and action.may_submit)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_planning_invariants(scenario):
    cmds, records, now, limits = scenario
    result = planned(cmds, records, now, limits)
    by_name = {c.name: c for c in cmds}
    current = {n: desired_intent(c, now).spec_hash for n, c in by_name.items()}
    posting = [a for a in result.actions if may_post(a)]
    new = [a for a in result.actions if a.kind in SUBMITS]

    # never two concurrent submissions for one intent, nor for one manifest
    assert max(Counter(a.spec_hash for a in posting).values(), default=0) <= 1
    assert max(Counter(a.name for a in posting).values(), default=0) <= 1

    for a in new:
        rec = records.get(a.spec_hash)
        # a succeeded, in-flight or stalled intent is never (re)submitted
        assert rec is None or rec.status == IntentState.FAILED
        assert (rec is None) == (a.kind == "submit")
        # a suspended manifest never submits
        assert not by_name[a.name].suspend
        # the operation id is the deterministic one of that attempt
        assert a.operation_id == operation_id(a.spec_hash, a.attempt)
        assert a.spec_hash == current[a.name]
        # dependencies have succeeded, and no other run of the manifest is in flight
        for dep in by_name[a.name].depends_on:
            dep_rec = records.get(current[dep])
            assert dep_rec is not None and dep_rec.status == IntentState.IN_SYNC
        assert not any(r.in_flight for r in records.values() if r.name == a.name)

    for a in result.actions:
        if a.kind == "resolve" and a.name in by_name and by_name[a.name].suspend:
            assert not a.may_submit

    # every desired manifest has exactly one view
    view_names = Counter(v.name for v in result.views)
    assert all(view_names[n] == 1 for n in by_name)
    assert max(view_names.values(), default=0) == 1

    # new submissions fit in the free capacity
    in_flight = [r for r in records.values() if r.in_flight]
    assert len(new) <= max(0, limits.max_in_flight - len(in_flight))
    for service in (SERVICE, OTHER_SERVICE):
        busy = sum(1 for r in in_flight if r.service == service)
        on_service = sum(1 for a in new if by_name[a.name].service.id == service)
        assert on_service <= max(0, limits.max_per_service - busy)

    # every recorded intent nobody asks for any more gets exactly one action
    for rec in records.values():
        if rec.spec_hash not in current.values():
            assert len([a for a in result.actions if a.spec_hash == rec.spec_hash]) == 1

    # pure: the same input gives the same plan
    assert planned(cmds, records, now, limits) == result


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.integers(1, 48))
def test_a_succeeded_once_intent_is_never_resubmitted_later(scenario, later_hours):
    cmds, _, now, limits = scenario
    once = [replace(c, policy=Once()) for c in cmds]
    done = recorded(*(record(c, IntentState.IN_SYNC, now=now) for c in once))
    result = planned(once, done, now + hours(later_hours), limits)
    assert [a.kind for a in result.actions] == ["noop"] * len(once)


# ------------------------------------------------------------------ held manifests


def _hold(name: str, reason: HoldReason = HoldReason.INVALID) -> Hold:
    problem = (Problem(f"{name}.yaml", 7, name, "spec.command: is required")
               if reason in (HoldReason.INVALID, HoldReason.BROKEN_FILE) else None)
    return Hold(name, reason, problem, f"invalid: {problem}; its last valid intent is kept"
                if problem else "kept as it is")


def test_an_invalid_manifest_keeps_its_record_nothing_is_sent_and_it_is_not_orphaned():
    rec = stalled(A, at=T0 - minutes(5))
    result = plan([], recorded(rec), T0, held={"a": _hold("a")})
    assert result.actions == ()
    v = view(result, "a")
    assert (v.state, v.spec_hash, v.settled) == (IntentState.INVALID, rec.spec_hash, True)
    assert "a.yaml:7" in v.reason and "spec.command: is required" in v.reason


def test_a_failed_intent_of_an_invalid_manifest_is_not_retried():
    rec = failed(A, at=T0 - minutes(5), retry_at=T0 - minutes(1))
    result = plan([], recorded(rec), T0, held={"a": _hold("a")})
    assert result.actions == ()
    assert view(result, "a").state == IntentState.INVALID


def test_an_in_flight_intent_of_an_invalid_manifest_is_still_followed_never_resent():
    rec = pending(A, at=T0 - hours(5), poll_at=T0)
    result = plan([], recorded(rec), T0, held={"a": _hold("a")})
    assert kinds(result) == [("poll", "a")]  # never timed out, never orphaned
    v = view(result, "a")
    assert v.state == IntentState.INVALID and not v.settled
    lookup = submitting(A, at=T0 - seconds(30))
    result = plan([], recorded(lookup), T0, held={"a": _hold("a")})
    (action,) = result.actions
    assert action.kind == "resolve" and action.may_submit is False


def test_an_invalid_manifest_never_recorded_shows_invalid_without_any_action():
    result = plan([], {}, T0, held={"a": _hold("a")})
    assert result.actions == ()
    v = view(result, "a")
    assert (v.state, v.spec_hash, v.settled) == (IntentState.INVALID, None, True)


def test_a_manifest_held_by_an_untrusted_source_shows_its_recorded_state():
    for reason in (HoldReason.UNCLEAN_SOURCE, HoldReason.EMPTY_SOURCE):
        rec = in_sync(A, at=T0 - minutes(5))
        result = plan([], recorded(rec), T0, held={"a": _hold("a", reason)})
        assert result.actions == ()
        assert (view(result, "a").state, view(result, "a").reason) == (
            IntentState.IN_SYNC, "kept as it is")
        # never recorded: nothing to keep, nothing shown
        assert plan([], {}, T0, held={"a": _hold("a", reason)}).views == ()


def test_a_held_name_that_is_valid_now_is_planned_as_usual():
    rec = in_sync(A, at=T0 - minutes(5))
    changed = command("a", payload={"new": 1})
    result = plan([changed], recorded(rec), T0, held={"a": _hold("a")})
    assert kinds(result) == [("submit", "a"), ("orphan", "a")]  # superseded, as without held
    assert view(result, "a").state == IntentState.SUBMITTING


def test_held_manifests_leave_the_others_alone():
    b = command("b")
    result = plan([], recorded(in_sync(A, at=T0 - minutes(5)), in_sync(b, at=T0 - minutes(5))),
                  T0, held={"a": _hold("a")})
    assert kinds(result) == [("orphan", "b")]
    assert view(result, "a").state == IntentState.INVALID
    assert view(result, "b").state == IntentState.ORPHANED


def test_a_held_manifest_with_two_live_records_shows_the_latest():
    old = pending(A, at=T0 - minutes(10), poll_at=T0)
    new = stalled(command("a", payload={"v": 2}), at=T0 - minutes(1))
    result = plan([], recorded(old, new), T0, held={"a": _hold("a")})
    assert kinds(result) == [("poll", "a")]
    assert view(result, "a").spec_hash == new.spec_hash


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.data())
def test_held_manifests_are_never_orphaned_nor_sent_anything_new(scenario, data):
    """Whichever manifests are held (invalid now, or dropped from the desired set while the
    source is not trusted), their records get no orphan, submit or retry action, what is in
    flight is still followed, and every held name with a record has one view."""
    cmds, records, now, limits = scenario
    names = sorted({c.name for c in cmds} | {r.name for r in records.values()})
    held_names = data.draw(st.lists(st.sampled_from(names), unique=True))
    reasons = data.draw(st.lists(st.sampled_from(list(HoldReason)), min_size=len(held_names),
                                 max_size=len(held_names)))
    held = {n: _hold(n, r) for n, r in zip(held_names, reasons, strict=True)}
    desired = [c for c in cmds if c.name not in held]  # a held name is not valid now
    result = plan(desired, records, now, limits=limits, held=held)
    for a in result.actions:
        if a.name in held:
            assert a.kind in ("poll", "resolve", "noop"), a
            assert not may_post(a)
    for name in held:
        live = [r for r in records.values() if r.name == name and r.retired is None]
        views = [v for v in result.views if v.name == name]
        if live:
            (v,) = views
            assert v.state in (IntentState.INVALID, *{r.status for r in live})
            assert v.settled == (not any(r.in_flight for r in live))
            for rec in live:
                if rec.in_flight:
                    assert [a.kind for a in result.actions if a.spec_hash == rec.spec_hash]
        else:
            assert len(views) == (1 if held[name].shows_invalid else 0)
    assert plan(desired, records, now, limits=limits, held=held) == result


def test_a_failed_dependent_of_a_stalled_dependency_is_stalled_and_settled():
    """Found in the redesign: it used to wait as 'failed', unsettled, with no wake-up, so
    ``run --once`` waited until its own deadline."""
    root = command("root")
    child = command("child", depends_on=["root"])
    result = planned([root, child], recorded(
        stalled(root, at=T0 - minutes(5)),
        failed(child, at=T0 - minutes(5), retry_at=T0 - seconds(1))))
    assert only(result, "child").kind == "wait-dependency"
    assert (view(result, "child").state, view(result, "child").settled) == (
        IntentState.STALLED, True)


def test_a_lost_intent_is_settled_and_never_retried_by_itself():
    job = command("job")
    rec = replace(stalled(job, at=T0 - minutes(5)), status=IntentState.LOST)
    result = planned([job], recorded(rec))
    assert only(result, "job").kind == "noop"
    assert (view(result, "job").state, view(result, "job").settled) == (IntentState.LOST, True)
