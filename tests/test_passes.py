"""One pass of the engine against the emulator, on the real clock: with a budget, a slot
that frees is filled from the plan's queue at once and operations are followed while their
next look is near; without one, a pass is the plan's actions and nothing more; the limits
hold at every moment; closing a pass ends it after the steps running.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from integration_support import (
    OTHER_SERVICE_ID,
    SERVICE_ID,
    executions,
    manifest,
    running_emulator,
    write_manifests,
)

from reconciler.ailake.client import AiLakeClient, ClientSettings, RequestRecord
from reconciler.ailake.emulator import RunningEmulator
from reconciler.execution.engine import Engine, EngineSettings, Transition
from reconciler.model.manifest import LoadResult
from reconciler.model.states import IntentState
from reconciler.planning.planner import Limits
from reconciler.source.loader import load_manifests
from reconciler.store.sqlite import Store


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


@dataclass
class InFlight:
    """The engine's listener: operations in flight now, and the most there ever were."""

    now: set[str] = field(default_factory=set)
    per_service: Counter[str] = field(default_factory=Counter)
    peak: int = 0
    peak_per_service: Counter[str] = field(default_factory=Counter)

    def __call__(self, event: Transition) -> None:
        key = event.spec_hash
        if event.state in (IntentState.SUBMITTING, IntentState.PENDING):
            if key not in self.now:
                self.now.add(key)
                self.per_service[event.service] += 1
        elif key in self.now:
            self.now.discard(key)
            self.per_service[event.service] -= 1
        self.peak = max(self.peak, len(self.now))
        for service, count in self.per_service.items():
            self.peak_per_service[service] = max(self.peak_per_service[service], count)


@dataclass
class Rig:
    engine: Engine
    store: Store
    emu: RunningEmulator
    manifests: Path
    flight: InFlight
    requests: list[RequestRecord]

    def load(self) -> LoadResult:
        result = load_manifests(self.manifests)
        assert not result.problems, result.problems
        return result

    def states(self) -> Counter[str]:
        return Counter(str(r.status) for r in self.store.intents().values())

    def posts(self) -> int:
        return sum(1 for r in self.requests if r.method == "POST")


@pytest.fixture
async def rig(tmp_path: Path, emulator: RunningEmulator) -> AsyncIterator[Rig]:
    emulator.state.reset()
    flight = InFlight()
    requests: list[RequestRecord] = []
    settings = EngineSettings(limits=Limits(max_in_flight=2, max_per_service=2),
                              poll_initial=0.02, poll_max=0.2, resolve_delay=0.02)
    async with AiLakeClient(ClientSettings(base_url=emulator.url),
                            observer=requests.append) as client:
        with Store(tmp_path / "state.db") as store:
            engine = Engine(client, store, settings=settings, listeners=[flight])
            engine.start("test")
            yield Rig(engine, store, emulator, tmp_path / "manifests", flight, requests)


def quick(count: int, *, services: tuple[str, ...] = (SERVICE_ID,),
          command: str = "quick") -> list[dict[str, object]]:
    return [manifest(f"m{i}", command, service=services[i % len(services)])
            for i in range(count)]


async def test_a_freed_slot_is_filled_in_the_same_pass(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(6))
    await rig.engine.reconcile(rig.load(), budget=20.0)
    assert rig.states() == {IntentState.IN_SYNC: 6}
    assert len(executions(rig.emu.url)) == 6


async def test_a_pass_without_a_budget_is_its_plans_actions_only(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(6))
    plan = await rig.engine.reconcile(rig.load())
    assert [a.kind for a in plan.executable] == ["submit", "submit"]
    assert len(plan.queued) == 4
    assert rig.posts() == 2
    assert rig.states() == {IntentState.PENDING: 2}


async def test_the_in_flight_limits_hold_at_every_moment_of_a_pass(rig: Rig) -> None:
    rig.engine.settings = EngineSettings(limits=Limits(max_in_flight=3, max_per_service=2),
                                         poll_initial=0.02, poll_max=0.2)
    write_manifests(rig.manifests, quick(9, services=(SERVICE_ID, OTHER_SERVICE_ID)))
    await rig.engine.reconcile(rig.load(), budget=20.0)
    assert rig.states() == {IntentState.IN_SYNC: 9}
    assert rig.flight.peak == 3
    assert max(rig.flight.peak_per_service.values()) == 2


async def test_a_pass_that_submits_nothing_starts_nothing_from_its_queue(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(4))
    await rig.engine.reconcile(rig.load(), submit=False, budget=5.0)
    assert rig.posts() == 0
    assert rig.states() == {}


async def test_closing_a_pass_ends_it_after_the_steps_running(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(2, command="long"))  # 3 s each
    started = time.monotonic()
    task = asyncio.ensure_future(rig.engine.reconcile(rig.load(), budget=30.0))
    await asyncio.sleep(0.3)
    rig.engine.close_pass()
    await asyncio.wait_for(task, 2.0)
    assert time.monotonic() - started < 1.5
    assert rig.states() == {IntentState.PENDING: 2}  # recorded, followed by the next pass


async def test_a_pass_ends_with_its_budget_while_operations_run_on(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(1, command="hang"))
    started = time.monotonic()
    await rig.engine.reconcile(rig.load(), budget=0.5)
    assert time.monotonic() - started < 1.5
    assert rig.states() == {IntentState.PENDING: 1}


async def test_an_operation_whose_next_look_is_far_is_left_to_the_next_pass(rig: Rig) -> None:
    rig.engine.settings = EngineSettings(limits=Limits(max_in_flight=2, max_per_service=2),
                                         poll_initial=5.0, poll_max=5.0)
    rig.engine.timers.settings = rig.engine.settings.timing()
    write_manifests(rig.manifests, quick(1))
    started = time.monotonic()
    await rig.engine.reconcile(rig.load(), budget=20.0)
    assert time.monotonic() - started < 1.0  # the first look is 5 s away: not waited for
    assert rig.states() == {IntentState.PENDING: 1}


async def test_an_unchanged_load_on_an_unchanged_store_is_not_planned_again(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(3))
    load = rig.load()
    first = rig.engine.plan(load)
    assert rig.engine.plan(load) is first
    await rig.engine.reconcile(load)  # records claims: the store changed
    assert rig.engine.plan(load) is not first


async def test_a_kept_plan_is_made_again_once_its_wake_up_comes(rig: Rig) -> None:
    write_manifests(rig.manifests, quick(1, command="hang"))
    load = rig.load()
    await rig.engine.reconcile(load)
    kept = rig.engine.plan(load)
    assert kept.wake_at is not None  # its next poll
    assert rig.engine.plan(load, kept.wake_at - timedelta(microseconds=1)) is kept
    again = rig.engine.plan(load, kept.wake_at)
    assert again is not kept and [a.kind for a in again.executable] == ["poll"]
