"""The engine in-process against the emulator: identity-driven re-runs, schedules and
intervals on an injected wall clock, recovery by probing, and zero API calls for intents
that are in sync.

The engine's clock is a :class:`FakeClock`; the emulator's operation durations run on its
own monotonic clock, so these tests use commands that finish at once (``instant``) or
within 100 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from integration_support import (
    FakeClock,
    executions,
    manifest,
    running_emulator,
    write_manifest,
    write_manifests,
)

from reconciler.ailake.client import AiLakeClient, ClientSettings, RequestRecord
from reconciler.ailake.emulator import RunningEmulator
from reconciler.execution.engine import Engine, EngineSettings, Transition
from reconciler.model.lifecycle import Claimed, transition
from reconciler.model.manifest import LoadResult
from reconciler.planning.planner import Plan
from reconciler.source.loader import load_manifests
from reconciler.store.sqlite import Store

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    """One emulator for the module; each test resets it."""
    with running_emulator() as emu:
        yield emu


@dataclass
class Rig:
    """An engine on a fake clock, a file store and a recording client."""

    engine: Engine
    clock: FakeClock
    store: Store
    emu: RunningEmulator
    manifests: Path
    requests: list[RequestRecord] = field(default_factory=list)
    events: list[Transition] = field(default_factory=list)

    def load(self) -> LoadResult:
        result = load_manifests(self.manifests)
        assert not result.problems, result.problems
        return result

    def write(self, *docs: dict[str, Any]) -> None:
        write_manifests(self.manifests, docs)

    def executions(self) -> list[dict[str, Any]]:
        return executions(self.emu.url)

    async def reconcile(self) -> Plan:
        return await self.engine.reconcile(self.load())

    async def settle(self, *, step: float = 1.0, limit: int = 50) -> Plan:
        """Reconcile until nothing is in flight or due, moving the clock by ``step``
        seconds between passes (past every poll and retry due)."""
        for _ in range(limit):
            plan = await self.reconcile()
            if not any(r.in_flight for r in self.store.intents().values()) and not any(
                    a.kind in ("submit", "retry", "resolve", "poll", "wait-backoff") for a in
                    self.engine.plan(self.load()).actions):
                return plan
            self.clock.advance(step)
        raise AssertionError("the engine did not settle")

    def posts(self) -> list[RequestRecord]:
        return [r for r in self.requests if r.method == "POST"]


@pytest.fixture
async def rig(tmp_path: Path, emulator: RunningEmulator) -> AsyncIterator[Rig]:
    emulator.state.reset()
    clock = FakeClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    requests: list[RequestRecord] = []
    events: list[Transition] = []
    settings = ClientSettings(base_url=emulator.url)
    async with AiLakeClient(settings, observer=requests.append) as client:
        with Store(tmp_path / "state.db") as store:
            engine = Engine(client, store, clock=clock, listeners=[events.append],
                            settings=EngineSettings(poll_initial=0.01, poll_max=0.05,
                                                    resolve_delay=0.01))
            yield Rig(engine, clock, store, emulator, tmp_path / "manifests", requests,
                      events)


# ---------------------------------------------------------------------------- identity


async def test_a_payload_change_gives_exactly_one_new_run(rig: Rig) -> None:
    rig.write(manifest("job", "instant", payload={"v": 1}), manifest("other", "instant"))
    await rig.settle()
    assert len(rig.executions()) == 2

    rig.write(manifest("job", "instant", payload={"v": 2}))
    await rig.settle()
    await rig.settle()

    ran = rig.executions()
    assert len(ran) == 3
    assert ran[-1]["payload"] == {"v": 2}
    assert {r.status for r in rig.store.intents().values()} == {"in_sync"}
    assert len(rig.store.intents_named("job")) == 2  # the old intent kept as history


async def test_a_rerun_change_gives_exactly_one_new_run(rig: Rig) -> None:
    rig.write(manifest("job", "instant", payload={"v": 1}))
    await rig.settle()
    rig.write(manifest("job", "instant", payload={"v": 1}, rerun="2"))
    await rig.settle()
    await rig.settle()
    ran = rig.executions()
    assert len(ran) == 2
    assert ran[0]["payload"] == ran[1]["payload"] == {"v": 1}
    assert ran[0]["operationId"] != ran[1]["operationId"]


@pytest.mark.parametrize("change", [
    {"timeout": "5m"},
    {"retry": {"limit": 7, "backoff": "1s"}},
    {"labels": {"team": "other"}},
    {"dependsOn": ["base"]},
    {"suspend": True},
], ids=["timeout", "retry", "labels", "dependsOn", "suspend"])
async def test_a_change_outside_the_identity_gives_no_new_run(
        rig: Rig, change: dict[str, Any]) -> None:
    rig.write(manifest("base", "instant"), manifest("job", "instant", payload={"v": 1}))
    await rig.settle()
    assert len(rig.executions()) == 2

    rig.write(manifest("job", "instant", payload={"v": 1}, **change))
    plan = await rig.settle()

    assert len(rig.executions()) == 2
    assert not plan.changes
    assert {v.name: v.state for v in plan.views}["job"] == "in_sync"


# ---------------------------------------------------------------------------- schedules


async def test_a_schedule_runs_once_per_tick_on_the_injected_clock(rig: Rig) -> None:
    rig.write(manifest("nightly", "instant", policy={"schedule": "0 3 * * *"}))

    # 02:00: the last tick (yesterday 03:00) is long past its starting deadline
    plan = await rig.settle()
    assert rig.executions() == []
    assert plan.wake_at == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)

    rig.clock.set(datetime(2026, 3, 2, 3, 0, tzinfo=UTC))  # exactly the tick
    await rig.settle()
    assert len(rig.executions()) == 1

    for later in ("03:00:30", "04:00", "12:00", "23:59:59"):
        hour, minute, *second = map(int, later.split(":"))
        rig.clock.set(datetime(2026, 3, 2, hour, minute, *second, tzinfo=UTC))
        await rig.settle()
    assert len(rig.executions()) == 1

    rig.clock.set(datetime(2026, 3, 3, 3, 0, 5, tzinfo=UTC))  # the next tick
    await rig.settle()
    ran = rig.executions()
    assert len(ran) == 2
    assert ran[0]["operationId"] != ran[1]["operationId"]
    windows = sorted(i.window for i in rig.store.intents(include_retired=True).values())
    assert windows == ["2026-03-02T03:00:00Z", "2026-03-03T03:00:00Z"]


async def test_a_schedule_tick_missed_by_more_than_its_starting_deadline_is_skipped(
        rig: Rig) -> None:
    rig.write(manifest("nightly", "instant",
                       policy={"schedule": "0 3 * * *", "startingDeadline": "30m"}))
    rig.clock.set(datetime(2026, 3, 2, 3, 45, tzinfo=UTC))  # 45 min late: skipped

    plan = await rig.settle()

    assert rig.executions() == []
    assert {v.name: v.state for v in plan.views}["nightly"] == "waiting"
    assert any(a.kind == "wait-schedule" for a in plan.actions)
    rig.clock.set(datetime(2026, 3, 2, 18, 0, tzinfo=UTC))
    await rig.settle()
    assert rig.executions() == []

    rig.clock.set(datetime(2026, 3, 3, 3, 20, tzinfo=UTC))  # 20 min late: runs
    await rig.settle()
    assert len(rig.executions()) == 1


async def test_a_schedule_after_a_long_outage_runs_at_most_once(rig: Rig) -> None:
    rig.write(manifest("nightly", "instant", policy={"schedule": "0 3 * * *"}))
    rig.clock.set(datetime(2026, 3, 2, 3, 1, tzinfo=UTC))
    await rig.settle()
    assert len(rig.executions()) == 1

    # three days down; back within the latest tick's starting deadline: one run, no burst
    rig.clock.advance(3 * DAY)
    for _ in range(5):
        await rig.settle()
        rig.clock.advance(60)
    assert len(rig.executions()) == 2

    # down again for three days, back long after the tick: nothing at all
    rig.clock.set(datetime(2026, 3, 8, 9, 0, tzinfo=UTC))
    for _ in range(3):
        await rig.settle()
        rig.clock.advance(3600)
    assert len(rig.executions()) == 2


async def test_an_interval_policy_runs_once_per_window_without_catching_up(rig: Rig) -> None:
    rig.write(manifest("hourly", "instant", policy={"interval": "1h"}))
    rig.clock.set(datetime(2026, 3, 2, 10, 15, tzinfo=UTC))

    plan = await rig.settle()

    assert len(rig.executions()) == 1
    assert plan.wake_at == datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
    rig.clock.set(datetime(2026, 3, 2, 10, 59, 59, tzinfo=UTC))
    await rig.settle()
    assert len(rig.executions()) == 1

    rig.clock.set(datetime(2026, 3, 2, 11, 0, tzinfo=UTC))
    await rig.settle()
    assert len(rig.executions()) == 2

    rig.clock.advance(3 * DAY + timedelta(minutes=7))  # a long outage: one run, no burst
    for _ in range(3):
        await rig.settle()
        rig.clock.advance(60)
    assert len(rig.executions()) == 3
    current = [i for i in rig.store.intents().values() if i.name == "hourly"]
    assert [i.window for i in current] == ["2026-03-05T11:00:00Z"]


# ---------------------------------------------------------------------------- recovery, cost


async def test_in_sync_intents_cost_no_api_call(rig: Rig) -> None:
    rig.write(*(manifest(f"job-{i}", "instant", payload={"i": i}) for i in range(5)),
              manifest("by-name", "instant", service=None, service_name="warehouse"),
              manifest("suspended", "instant", suspend=True))
    await rig.settle()
    assert len(rig.executions()) == 6
    rig.requests.clear()

    for _ in range(3):
        plan = await rig.reconcile()
        rig.clock.advance(60)

    assert rig.requests == []
    assert not plan.executable


async def test_an_empty_store_is_rebuilt_with_lookups_only(rig: Rig, tmp_path: Path) -> None:
    rig.write(manifest("done", "instant"),
              manifest("flaky-one", "flaky", retry={"limit": 2, "backoff": "1s"}),
              manifest("by-name", "instant", service=None, service_name="warehouse"))
    await rig.settle()
    assert len(rig.executions()) == 4  # flaky-one: a failure, then a success

    with Store(tmp_path / "fresh.db") as fresh:
        engine = Engine(rig.engine.client, fresh, clock=rig.clock,
                        settings=rig.engine.settings)
        rig.requests.clear()
        await engine.reconcile(rig.load())
        plan = engine.plan(rig.load())
        records = {r.name: r for r in fresh.intents().values()}

    assert len(rig.executions()) == 4
    assert {r.method for r in rig.requests} == {"GET"}
    assert {v.name: v.state for v in plan.views} == dict.fromkeys(
        ("by-name", "done", "flaky-one"), "in_sync")
    assert records["flaky-one"].attempts == 2
    assert not plan.changes


async def test_a_dependent_is_submitted_only_after_its_dependency_succeeded(rig: Rig) -> None:
    rig.write(manifest("first", "quick"), manifest("second", "instant", dependsOn=["first"]))
    plan = await rig.reconcile()
    assert [a.name for a in plan.changes] == ["first"]
    assert {v.name: v.state for v in plan.views}["second"] == "waiting"

    await rig.settle(step=0.2)

    ran = rig.executions()
    assert [e["command"] for e in ran] == ["quick", "instant"]
    assert ran[1]["startedAt"] >= ran[0]["finishedAt"]
    states = [(e.name, e.state) for e in rig.events]
    assert states.index(("first", "in_sync")) < states.index(("second", "submitting"))


async def test_a_removed_manifest_is_orphaned_and_nothing_is_sent(rig: Rig) -> None:
    rig.write(manifest("keep", "instant"), manifest("drop", "instant"))
    await rig.settle()
    (rig.manifests / "drop.yaml").unlink()
    rig.requests.clear()

    plan = await rig.settle()

    assert rig.requests == []
    assert {v.name: v.state for v in plan.views}["drop"] == "orphaned"
    assert len(rig.executions()) == 2


async def test_a_single_manifest_file_source_works(rig: Rig, tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "one", manifest("solo", "instant"))
    rig.manifests = path
    await rig.settle()
    assert len(rig.executions()) == 1


# ---------------------------------------------------------------------------- credentials


async def test_a_run_refused_for_the_token_waits_instead_of_stalling(tmp_path: Path) -> None:
    """401/403 concern the token or the organisation, not the intent: the attempt is kept
    and sent once the token works, without a manifest change or ``reconciler retry``."""
    clock = FakeClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    write_manifests(tmp_path / "m", [manifest("job", "flaky",
                                              retry={"limit": 2, "backoff": "1s"})])
    load = load_manifests(tmp_path / "m")
    settings = EngineSettings(poll_initial=0.01, poll_max=0.05, resolve_delay=0.01,
                              credentials_retry=5.0)
    with running_emulator(token="right-token") as emu, Store(tmp_path / "s.db") as store:
        async with AiLakeClient(ClientSettings(base_url=emu.url, token="right-token")) as ok:
            engine = Engine(ok, store, clock=clock, settings=settings)
            for _ in range(100):  # attempt 0 runs and fails (failTimes: 1), in real time
                await engine.reconcile(load)
                clock.advance(0.2)
                if store.intents_named("job")[0].status == "failed":
                    break
                await asyncio.sleep(0.05)
            assert store.intents_named("job")[0].status == "failed"
            clock.advance(2)  # the retry is due

            async with AiLakeClient(ClientSettings(base_url=emu.url,
                                                   token="revoked-token")) as bad:
                engine.client = bad
                await engine.reconcile(load)
            assert engine.failed_actions == 1  # the pass counts as an error
            refused = store.intents_named("job")[0]
            assert refused.status == "submitting"  # kept, not stalled
            assert refused.last_error is not None and refused.last_error["status"] == 401

            engine.client = ok
            clock.advance(6)  # past credentials_retry: look it up (404), then send it
            for _ in range(100):
                await engine.reconcile(load)
                clock.advance(0.2)
                if store.intents_named("job")[0].status == "in_sync":
                    break
                await asyncio.sleep(0.05)
            assert store.intents_named("job")[0].status == "in_sync"
            assert len(executions(emu.url)) == 2  # attempt 0 failed, attempt 1 succeeded


async def test_an_unanswered_run_is_resent_only_after_the_settle_window(rig: Rig) -> None:
    """A write-ahead attempt whose POST may still be in flight (the process died while
    sending it) is not re-sent on a first 404: only once ``settle`` has passed."""
    rig.write(manifest("job", "instant"))
    load = rig.load()
    want = rig.engine.plan(load).desired["job"]
    rig.store.save(transition(None, Claimed(want.new_intent(), 0, want.operation_id(0),
                                            want.command.service.label, load.revision),
                              rig.clock()))
    settle = rig.engine.settings.settle

    rig.clock.advance(1)
    await rig.reconcile()  # lookup: 404, but the POST could still arrive
    assert rig.posts() == []
    assert rig.store.intent(want.spec_hash).status == "submitting"  # type: ignore[union-attr]

    rig.clock.advance(settle)
    await rig.settle()
    assert len(rig.posts()) == 1
    assert [e["operationId"] for e in rig.executions()] == [want.operation_id(0)]
