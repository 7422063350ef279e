"""Time only moves forward for a manifest: windows, cron ticks across DST, clocks set back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plan_support import command

from reconciler.model.manifest import Interval, Schedule
from reconciler.planning import desired_intent, plan

PRAGUE = "Europe/Prague"


def daily_at_0230():
    return command("nightly", policy=Schedule(cron="30 2 * * *", timezone=PRAGUE))


def windows_between(cmd, start: datetime, hours: int) -> list[str]:
    """The distinct windows ``cmd`` asks for, minute by minute, in order."""
    seen: list[str] = []
    moment = start
    while moment < start + timedelta(hours=hours):
        window = desired_intent(cmd, moment).window
        if not seen or seen[-1] != window:
            seen.append(window)
        moment += timedelta(minutes=1)
    return seen


def test_a_wall_time_that_happens_twice_fires_once_at_its_first_occurrence():
    # 2026-10-25: Prague falls back from 03:00 CEST to 02:00 CET; 02:30 happens twice
    seen = windows_between(daily_at_0230(), datetime(2026, 10, 24, 22, 0, tzinfo=UTC), 8)
    assert seen == ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z"]  # 02:30 CEST only


def test_a_wall_time_that_does_not_exist_fires_once_at_the_first_valid_instant_after_it():
    # 2026-03-29: Prague springs forward from 02:00 CET to 03:00 CEST; 02:30 never happens
    seen = windows_between(daily_at_0230(), datetime(2026, 3, 28, 22, 0, tzinfo=UTC), 8)
    assert seen == ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z"]  # 03:00 CEST


def test_an_hourly_schedule_skips_the_repeated_hour_and_never_fires_twice():
    cmd = command("hourly", policy=Schedule(cron="0 * * * *", timezone=PRAGUE))
    seen = windows_between(cmd, datetime(2026, 10, 24, 20, 0, tzinfo=UTC), 12)
    assert len(seen) == len(set(seen)) == 11


def test_the_next_tick_after_a_spring_forward_gap_is_the_first_valid_instant():
    want = desired_intent(daily_at_0230(), datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert want.next_window == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_an_interval_window_is_never_older_than_the_latest_recorded_one():
    cmd = command("hourly", policy=Interval(every=timedelta(hours=1)))
    now = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    later = desired_intent(cmd, now + timedelta(hours=2))
    set_back = desired_intent(cmd, now, later.window)
    assert set_back.window == later.window
    assert set_back.spec_hash == later.spec_hash


def test_a_cron_tick_is_never_older_than_the_latest_recorded_one():
    cmd = daily_at_0230()
    ahead = desired_intent(cmd, datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    set_back = desired_intent(cmd, datetime(2026, 1, 3, 12, 0, tzinfo=UTC), ahead.window)
    assert set_back.window == ahead.window


def test_the_planner_keeps_the_recorded_window_when_the_clock_is_set_back():
    cmd = command("hourly", policy=Interval(every=timedelta(hours=1)))
    now = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    recorded_window = desired_intent(cmd, now + timedelta(hours=1)).window
    result = plan([cmd], {}, now, windows={"hourly": recorded_window})
    assert result.desired["hourly"].window == recorded_window


# ------------------------------------------------------------------ kept ticks


def test_kept_ticks_answer_as_croniter_does_forward_backward_and_across_dst() -> None:
    from zoneinfo import ZoneInfo

    from reconciler.planning import windows

    zone = ZoneInfo("Europe/Prague")
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # fall-back night ahead
    moments = [start + timedelta(minutes=17 * i) for i in range(200)]
    moments += list(reversed(moments))[::7]  # and a clock set back
    for cron in ("30 2 * * *", "*/45 * * * *", "0 0 1 * *"):
        for now in moments:
            tick = windows._latest_tick(cron, zone, now)
            expected = (tick, windows._next_tick(cron, zone, max(now, tick)))
            assert windows._ticks_around(cron, zone, now) == expected, (cron, now)
