"""A plan made with what the last plan of the same load kept (:class:`PlanMemo`) is the
plan made without it, whatever changed in between; only the work is saved."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from plan_support import T0, command, failed, in_sync, minutes, pending, recorded, stalled

from reconciler.model.manifest import Interval
from reconciler.model.states import IntentState
from reconciler.planning.planner import Limits, PlanMemo, plan

LIMITS = Limits(max_in_flight=2, max_per_service=2)


def commands() -> tuple:  # type: ignore[type-arg]
    return (command("a"), command("b", depends_on=["a"]), command("c"),
            command("d", policy=Interval(every=minutes(60))), command("e"),
            command("f", depends_on=["e"]), command("g"))


def test_a_plan_with_the_memo_is_the_plan_without_it_as_records_change() -> None:
    cmds = commands()
    a, _, c, _, e, _, g = cmds
    memo = PlanMemo()
    stages = [
        recorded(),
        recorded(in_sync(a, at=T0), pending(c, at=T0, poll_at=T0 + minutes(1))),
        recorded(in_sync(a, at=T0), in_sync(c, at=T0), stalled(e, at=T0)),
        recorded(in_sync(a, at=T0), failed(c, at=T0, retry_at=T0 + minutes(1)),
                 stalled(e, at=T0), in_sync(g, at=T0)),
        recorded(in_sync(a, at=T0), in_sync(c, at=T0), in_sync(e, at=T0), in_sync(g, at=T0)),
    ]
    for step, records in enumerate(stages):
        for now in (T0, T0 + minutes(90)):
            expected = plan(cmds, records, now, limits=LIMITS)
            assert plan(cmds, records, now, limits=LIMITS, memo=memo) == expected, (step, now)


def test_a_kept_action_is_not_reused_for_another_record_of_the_same_intent() -> None:
    cmds = commands()
    a = cmds[0]
    memo = PlanMemo()
    synced = in_sync(a, at=T0)
    plan(cmds, recorded(synced), T0, memo=memo)
    stalled_now = replace(synced, status=IntentState.STALLED,
                          last_error={"title": "Gone"})
    result = plan(cmds, recorded(stalled_now), T0, memo=memo)
    assert next(v for v in result.views if v.name == "a").state == IntentState.STALLED


def test_another_load_forgets_what_the_memo_kept() -> None:
    memo = PlanMemo()
    first = (command("a"),)
    plan(first, recorded(in_sync(first[0], at=T0)), T0, memo=memo)
    changed = (command("a", payload={"v": 2}),)
    result = plan(changed, recorded(in_sync(first[0], at=T0)), T0, memo=memo)
    assert result == plan(changed, recorded(in_sync(first[0], at=T0)), T0)
    assert next(a.kind for a in result.actions if a.name == "a") == "submit"


def test_a_new_load_keeps_what_belongs_to_its_unchanged_manifests() -> None:
    memo = PlanMemo()
    kept, changed = command("a"), command("b")
    records = recorded(in_sync(kept, at=T0), in_sync(changed, at=T0))
    plan((kept, changed), records, T0, memo=memo)
    reload = (kept, command("b", payload={"v": 2}))
    assert "a" in memo.settled
    result = plan(reload, records, T0, memo=memo)
    assert result == plan(reload, records, T0)
    assert set(memo.settled) == {"a"}  # b's kept action was for its old command


# ------------------------------------------------------------------ wake_at


def _scenarios() -> list[tuple[str, tuple, dict]]:  # type: ignore[type-arg]
    from plan_support import submitting

    from reconciler.model.manifest import Schedule

    nightly = Schedule(cron="0 3 * * *", timezone="UTC", starting_deadline=minutes(60))
    a, b, c = command("a"), command("b", depends_on=["a"]), command("c")
    night = command("n", policy=nightly)
    hourly = command("h", policy=Interval(every=minutes(60)))
    return [
        ("pending", (a,), recorded(pending(a, at=T0, poll_at=T0 + minutes(2)))),
        ("submitting", (a,), recorded(submitting(a, at=T0, lookup_at=T0 + minutes(1)))),
        ("backoff", (a,), recorded(failed(a, at=T0, retry_at=T0 + minutes(3)))),
        ("waiting on a pending dependency", (a, b),
         recorded(pending(a, at=T0, poll_at=T0 + minutes(5)),
                  failed(b, at=T0 - minutes(20), retry_at=T0 - minutes(1)))),
        ("capacity", (a, c, night), recorded(pending(a, at=T0, poll_at=T0 + minutes(9)))),
        ("a schedule", (night, hourly), recorded()),
        ("settled", (a, c), recorded(in_sync(a, at=T0), stalled(c, at=T0))),
    ]


def test_until_wake_at_the_same_inputs_give_the_same_plan() -> None:
    """What lets the engine keep its last plan while nothing changed: every moment at
    which a plan could change is in its ``wake_at``."""
    one = Limits(max_in_flight=1, max_per_service=1)
    for label, cmds, records in _scenarios():
        for start in (T0, T0.replace(hour=3, minute=40), T0 + minutes(61)):
            first = plan(cmds, records, start, limits=one)
            if first.wake_at is None:
                moments = [start + minutes(m) for m in (1, 60, 600)]
            else:
                span = first.wake_at - start
                moments = [start + span * f for f in (0.25, 0.5, 0.999)]
                moments.append(first.wake_at - timedelta(microseconds=1))
            for moment in moments:
                assert plan(cmds, records, moment, limits=one) == first, (label, start, moment)
