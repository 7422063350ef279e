"""The protocol's delays: polls that know the duration, the settle window on two clocks."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from reconciler.execution.timing import Durations, Timers, TimingSettings
from reconciler.model.lifecycle import Accepted, Claimed, transition
from reconciler.model.records import IntentRecord, NewIntent

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Clocks:
    """A wall clock and a monotonic clock that tests move independently."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono


def pending(at: datetime = T0) -> IntentRecord:
    intent = NewIntent("h" * 64, "job", "svc", "reindex", "", "{}")
    claimed = transition(None, Claimed(intent, 0, "op-0", "svc", "rev"), at).record
    rec = transition(claimed, Accepted("op-0", at), at).record
    assert rec is not None
    return rec


def timers(clocks: Clocks, durations: Durations | None = None,
           **settings: float) -> Timers:
    return Timers(TimingSettings(jitter=0.0, **settings), clocks.now, random.Random(1),
                  clocks.monotonic, durations)


def test_the_typical_duration_is_the_median_of_recent_successes():
    durations = Durations([("svc", "reindex", s) for s in (150.0, 140.0, 900.0)])
    assert durations.typical("svc", "reindex") == 150.0
    assert durations.typical("svc", "other") is None


def test_the_first_poll_comes_just_after_the_command_typically_ends():
    clocks = Clocks()
    t = timers(clocks, Durations([("svc", "reindex", 150.0)]))
    assert t.next_poll(pending(), 0) == T0 + timedelta(seconds=150 * 1.02)


def test_past_the_typical_end_looks_come_every_few_percent_of_the_age():
    clocks = Clocks()
    t = timers(clocks, Durations([("svc", "reindex", 150.0)]))
    clocks.wall = T0 + timedelta(seconds=160)
    assert t.next_poll(pending(), 1) == clocks.wall + timedelta(seconds=8)


def test_the_first_look_waits_for_the_upper_quartile_of_the_history():
    durations = Durations([("svc", "reindex", s) for s in (100.0, 110.0, 120.0, 200.0)])
    assert durations.first_look("svc", "reindex") == 120.0 * 1.02


def test_a_command_new_to_a_service_borrows_its_durations_on_the_others():
    durations = Durations([("other", "reindex", 150.0)])
    assert durations.typical("svc", "reindex") == 150.0
    assert durations.first_look("svc", "reindex") == 150.0 * 1.02
    assert durations.first_look("svc", "compact") is None


def test_a_success_found_at_the_first_look_moves_the_first_look_a_little_earlier():
    durations = Durations()
    durations.learn("svc", "reindex", 100.0, not_before=None)
    assert durations.first_look("svc", "reindex") == 100.0
    durations.learn("svc", "reindex", 100.0, not_before=None)
    assert 99.0 < durations.first_look("svc", "reindex") < 100.0  # type: ignore[operator]


def test_a_success_found_late_never_pushes_the_first_look_up():
    durations = Durations()
    durations.learn("svc", "reindex", 100.0, not_before=None)
    for _ in range(50):  # every first look found it done, however late the answer came
        durations.learn("svc", "reindex", 130.0, not_before=None)
    assert durations.first_look("svc", "reindex") < 100.0  # type: ignore[operator]


def test_one_still_running_at_the_first_look_moves_it_to_where_it_ended():
    durations = Durations()
    durations.learn("svc", "reindex", 100.0, not_before=None)
    durations.learn("svc", "reindex", 140.0, not_before=100.0)  # ended between: about 120
    assert durations.first_look("svc", "reindex") == 120.0


def test_the_first_look_settles_where_few_first_looks_are_early():
    rng = random.Random(7)
    durations = Durations()
    early = 0
    for i in range(3000):
        true = rng.uniform(95.0, 105.0)
        look = durations.first_look("svc", "reindex") or 0.0
        if i >= 1000 and look < true:
            early += 1
        durations.learn("svc", "reindex", max(look, true) if look >= true else true + 1.0,
                        not_before=None if look >= true else look)
    assert early / 2000 < 0.12
    assert 100.0 < durations.first_look("svc", "reindex") < 106.0  # type: ignore[operator]


def test_the_first_look_is_measured_from_the_acceptance():
    clocks = Clocks()
    t = timers(clocks, Durations([("svc", "reindex", 150.0)]))
    rec = replace(pending(), attempt_started_at=T0 - timedelta(seconds=5))
    assert t.next_poll(rec, 0) == T0 + timedelta(seconds=150 * 1.02)


def test_without_history_polls_back_off_exponentially_to_the_cap():
    clocks = Clocks()
    t = timers(clocks, poll_initial=1.0, poll_max=30.0)
    assert [(t.next_poll(pending(), n) - T0).total_seconds() for n in (0, 1, 2, 9)] == [
        1.0, 2.0, 4.0, 30.0]


def test_the_settle_window_needs_both_clocks_to_have_passed():
    clocks = Clocks()
    t = timers(clocks, settle=600.0)
    rec = replace(pending(), status="submitting")
    t.sent(rec)
    clocks.wall = T0 + timedelta(hours=2)  # the wall clock jumped forward
    assert t.settled_at(rec) is not None  # the monotonic clock says: not yet
    clocks.mono += 601
    assert t.settled_at(rec) is None


def test_an_unsent_request_is_settled_at_once():
    clocks = Clocks()
    rec = replace(pending(), attempt_started_at=None)
    assert timers(clocks).settled_at(rec) is None


def test_the_not_found_tolerance_counts_from_the_first_miss_on_both_clocks():
    clocks = Clocks()
    t = timers(clocks, not_found_tolerance=60.0)
    rec = replace(pending(), missing_since=T0)
    assert t.missing_until(rec) == T0 + timedelta(seconds=60)
    clocks.wall = T0 + timedelta(seconds=61)
    assert t.missing_until(rec) is not None  # monotonic: only just missed
    clocks.mono += 61
    assert t.missing_until(rec) is None
