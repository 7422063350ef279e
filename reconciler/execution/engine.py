"""The engine: executes a plan against the AI Lake API and records every transition.

Each action is I/O at the edge: the engine asks the API, turns the answer into a lifecycle
event (:mod:`reconciler.model.lifecycle`), and has the store persist the step that the pure
transition computes. Decisions of *what* to do live in :mod:`reconciler.planning`; the
exactly-once protocol (probe, claim, submit, resolve, poll) in
:mod:`reconciler.execution.protocol`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from reconciler.ailake.client import AiLakeClient
from reconciler.collector import collections_paused
from reconciler.errors import ApiError
from reconciler.execution.passes import Pass
from reconciler.execution.protocol import Fence, Protocol
from reconciler.execution.timing import Durations, Timers, TimingSettings
from reconciler.model.lifecycle import (
    Event,
    GaveUp,
    Retired,
    RetryRequested,
    Revived,
    transition,
)
from reconciler.model.lifecycle import Transition as Transition
from reconciler.model.manifest import LoadResult
from reconciler.model.records import Epoch, IntentRecord
from reconciler.model.states import SETTLED_BAD, IntentState, OperationStatus
from reconciler.planning.planner import Action, Desired, Limits, Plan, PlanMemo, plan
from reconciler.store.protocol import Store

__all__ = ["Engine", "EngineSettings", "Transition", "retry", "utcnow"]

log = structlog.get_logger("reconciler.engine")


def utcnow() -> datetime:
    """The wall clock, timezone-aware UTC (the engine's default clock)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class EngineSettings:
    """Execution bounds and polling cadence."""

    limits: Limits = field(default_factory=Limits)
    #: first poll delay; doubles per poll up to ``poll_max`` (seconds)
    poll_initial: float = 0.1
    poll_max: float = 30.0
    #: +- fraction of random jitter on poll delays
    jitter: float = 0.2
    #: delay before looking up a POST whose outcome is unknown (seconds)
    resolve_delay: float = 1.0
    #: API calls running at once within one reconcile
    max_concurrency: int = 16
    #: delay before trying again a run refused with 401/403 (token or entitlement)
    credentials_retry: float = 60.0
    #: seconds after a run POST was sent before a lookup's 404 proves it never arrived
    #: (independent of the request timeout: a gateway may hold a request for minutes)
    settle: float = 600.0
    #: seconds an accepted operation may answer 404 before it is recorded as lost
    not_found_tolerance: float = 600.0

    def timing(self) -> TimingSettings:
        return TimingSettings(poll_initial=self.poll_initial, poll_max=self.poll_max,
                              jitter=self.jitter, settle=self.settle,
                              not_found_tolerance=self.not_found_tolerance)


Listener = Callable[[Transition], None]


def retry(store: Store, name: str, *, now: datetime) -> list[str]:
    """Give the failed or stalled current intents of ``name`` a fresh retry budget and
    deadline, due now (``reconciler retry``). The spec hashes changed (empty: none)."""
    changed = []
    for rec in store.intents_named(name):
        if rec.retired is None and rec.status in SETTLED_BAD:
            store.save(transition(rec, RetryRequested(), now))
            changed.append(rec.spec_hash)
    return changed


@dataclass(frozen=True)
class _LastPlan:
    """A plan and its inputs: the load, the store's generation, the moment."""

    load: LoadResult
    generation: object
    made_at: datetime
    plan: Plan


class Engine:
    """Plans and executes one reconcile at a time against one store and one API."""

    def __init__(
        self,
        client: AiLakeClient,
        store: Store,
        *,
        settings: EngineSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        listeners: Sequence[Listener] = (),
        fence: Fence = lambda: None,
    ) -> None:
        self.store = store
        self.settings = settings or EngineSettings()
        self.clock = clock
        self.listeners = list(listeners)
        s = self.settings
        self.timers = Timers(s.timing(), clock, rng or random.Random(),
                             durations=Durations(store.recent_durations()))
        self.protocol = Protocol(client, self.record, self.timers,
                                 resolve_delay=s.resolve_delay,
                                 credentials_retry=s.credentials_retry, fence=fence)
        #: the epoch this engine works in (None: not started; every new intent is probed)
        self.epoch: Epoch | None = None
        #: actions of the last reconcile that ended in an API error (not counting
        #: lookups deferred after a transient failure, which are routine)
        self.failed_actions = 0
        #: the pass running (None: between passes)
        self._pass: Pass | None = None
        #: what one plan of a load hands the next (same plans, less work), and the last
        #: plan with what it was made of
        self._memo = PlanMemo()
        self._last_plan: _LastPlan | None = None

    @property
    def client(self) -> AiLakeClient:
        """The API client the protocol talks through (replaceable, e.g. new credentials)."""
        return self.protocol.client

    @client.setter
    def client(self, client: AiLakeClient) -> None:
        self.protocol.client = client

    # ------------------------------------------------------------------ epochs

    def start(self, holder: str, *, reason: str | None = None) -> Epoch:
        """Join the store's current epoch, or begin one (``reason``, or ``created`` for a
        store that never had one): leadership gained, a recovered store."""
        epoch = self.store.epoch()
        if reason is not None or epoch is None:
            epoch = self.store.begin_epoch(reason=reason or "created", holder=holder,
                                           now=self.clock())
            log.info("epoch_started", epoch=epoch.id, reason=epoch.reason,
                     action="every desired intent is looked up before anything is sent")
        self.epoch = epoch
        return epoch

    def probes_new_intents(self) -> bool:
        """Whether a never-recorded intent must be looked up before its first POST: outside
        an adopted epoch, and within its first settle window (a previous owner's requests
        may still be arriving), a claim alone proves nothing."""
        epoch = self.epoch
        if epoch is None or epoch.adopted_at is None:
            return True
        return self.clock() < epoch.started_at + timedelta(seconds=self.settings.settle)

    async def _adoption(self, current: Plan, recorded: Mapping[str, IntentRecord],
                        revision: str) -> bool:
        """The epoch's adoption pass: probe every desired intent that the store does not
        hold as terminal (never recorded: from attempt 0; failed: its next attempt)."""
        assert self.epoch is not None
        gate = asyncio.Semaphore(self.settings.max_concurrency)
        ok = True

        async def probe(want: Desired) -> None:
            nonlocal ok
            rec = recorded.get(want.spec_hash)
            if rec is not None and rec.status != IntentState.FAILED:
                return  # terminal, or in flight: resolve and poll look it up anyway
            async with gate:
                try:
                    await self.protocol.probe(want, rec, revision)
                except ApiError as exc:
                    ok = False
                    log.warning("adoption_lookup_failed", name=want.name,
                                status=exc.status, trace_id=exc.trace_id, error=str(exc))

        await asyncio.gather(*(probe(w) for w in current.desired.values()))
        if ok:
            self.epoch = self.store.adopted(self.epoch, now=self.clock())
            log.info("epoch_adopted", epoch=self.epoch.id, intents=len(current.desired))
        return ok

    # ------------------------------------------------------------------ planning

    def plan(self, load: LoadResult, now: datetime | None = None) -> Plan:
        """What a reconcile would do now; reads the store only."""
        return self._read_and_plan(load, now)[1]

    def _read_and_plan(self, load: LoadResult, now: datetime | None = None,
                       ) -> tuple[dict[str, IntentRecord], Plan]:
        """The store's records and the plan of ``load`` on them. The last plan is the
        plan while its inputs are the same (the same load, a store that did not change)
        and its ``wake_at`` has not come: nothing is planned then (a steady pass over
        50,000 manifests plans nothing)."""
        generation = self.store.generation()  # before the read: a change meanwhile shows
        recorded = self.store.intents()
        return recorded, self._plan(load, recorded, generation, now or self.clock())

    def _plan(self, load: LoadResult, recorded: Mapping[str, IntentRecord],
              generation: object, now: datetime) -> Plan:
        last = self._last_plan
        if (last is not None and generation is not None and last.load is load
                and last.generation == generation and last.made_at <= now
                and (last.plan.wake_at is None or now < last.plan.wake_at)):
            return last.plan
        with collections_paused():
            made = plan(load.commands, recorded, now, limits=self.settings.limits,
                        windows=self.store.latest_windows(), held=load.held, memo=self._memo)
        self._last_plan = _LastPlan(load, generation, now, made)
        return made

    async def reconcile(self, load: LoadResult, *, submit: bool = True,
                        budget: float | None = None) -> Plan:
        """Plan, then execute every due action concurrently. ``submit=False`` (shutting
        down) still polls and records, but starts nothing new. In an epoch whose adoption
        pass is not done, that pass comes first, and nothing is sent until it succeeds.
        ``budget`` (seconds; the daemon's): for that long, fill each freed slot from the
        plan's queue and follow the operations whose next look is near
        (:mod:`~reconciler.execution.passes`); :meth:`close_pass` ends it sooner."""
        self.protocol.new_pass()
        self.failed_actions = 0
        recorded, current = self._read_and_plan(load)
        if self.epoch is not None and self.epoch.adopted_at is None:
            if not await self._adoption(current, recorded, load.revision):
                self.failed_actions += 1
                submit = False
            recorded, current = self._read_and_plan(load)

        async def execute(action: Action, rec: IntentRecord | None) -> bool:
            return await self._execute(action, current, rec, load.revision, submit)

        self._pass = Pass(current, recorded, execute, limits=self.settings.limits,
                          concurrency=self.settings.max_concurrency, clock=self.clock,
                          submit=submit, budget=budget)
        try:
            await self._pass.run()
        finally:
            self.failed_actions += self._pass.failed
            self._pass = None
        return current

    def close_pass(self) -> None:
        """End the running pass's refills and follow-ups (a trigger, SIGTERM): the steps
        running finish and record."""
        if self._pass is not None:
            self._pass.close()

    async def adopt(self, wants: Sequence[Desired]) -> dict[str, str]:
        """Probe each never-recorded intent of ``wants`` and adopt what the server has:
        the status of the latest attempt found, by spec hash (``plan --api-url``)."""
        found: dict[str, str] = {}
        for want in wants:
            status = await self.protocol.probe(want, self.store.intent(want.spec_hash), "")
            if status is not None:
                found[want.spec_hash] = status
        return found

    # ------------------------------------------------------------------ recording

    def record(self, rec: IntentRecord | None, event: Event) -> IntentRecord | None:
        """Persist the transition ``event`` makes from ``rec``; tell the listeners. The new
        record, or None: the intent is forgotten, or another process moved it first (then
        nothing was written, and this pass leaves the intent alone)."""
        step = transition(rec, event, self.clock())
        if not self.store.save(step):
            log.info("record_moved", name=rec.name if rec else None, spec_hash=step.spec_hash,
                     lifecycle_event=type(event).__name__,
                     reason="another process changed this intent first; nothing written")
            return None
        if self._pass is not None:
            self._pass.moved(rec, step.record, step.spec_hash)
        if step.transition is not None:
            self._learn(step.transition, rec)
            self._notify(step.transition)
        return step.record

    def _learn(self, event: Transition, before: IntentRecord | None) -> None:
        """A success teaches its command's typical duration; ``before``: the record it
        succeeded from (its last look, if any, bounds the end from below)."""
        if event.outcome != OperationStatus.SUCCEEDED or event.duration is None:
            return
        seen, not_before = event.duration, None
        if before is not None and before.attempt_started_at is not None:
            # measured from the acceptance, as the first look is scheduled
            start = before.accepted_at or before.attempt_started_at
            seen -= max(0.0, (start - before.attempt_started_at).total_seconds())
            if before.poll_count > 0:
                not_before = (before.updated_at - start).total_seconds()
        self.timers.durations.learn(event.service, event.command, max(0.0, seen),
                                    not_before=not_before)

    def _retired(self, spec_hash: str) -> IntentRecord | None:
        """The retired record of an intent a manifest asks for again, if there is one."""
        rec = self.store.intent(spec_hash)
        return rec if rec is not None and rec.retired is not None else None

    def _notify(self, event: Transition) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break reconciliation
                log.exception("listener_failed", listener=repr(listener))

    # ------------------------------------------------------------------ actions

    async def _execute(self, action: Action, current: Plan, rec: IntentRecord | None,
                       revision: str, submit: bool) -> bool:
        """Carry out one action on ``rec`` (its record as this pass knows it); False when
        it ended in an API error worth counting."""
        want = current.desired.get(action.name)
        if want is not None and want.spec_hash != action.spec_hash:
            want = None  # a superseded record of this manifest
        kind = action.kind
        if kind == "orphan":
            self.record(rec, Retired("superseded" if action.superseded else "orphaned",
                                     action.reason))
        elif kind == "give-up":
            self.record(rec, GaveUp(action.reason))
        elif kind == "timeout":
            assert rec is not None
            await self.protocol.follower.last_look(rec, want.command if want else None,
                                                   action.reason)
        elif kind == "poll":
            assert rec is not None
            await self.protocol.follower.poll(rec, want.command if want else None)
        elif kind == "resolve":
            assert rec is not None
            return await self.protocol.resolve(rec, want, revision,
                                               may_submit=submit and action.may_submit)
        elif kind == "submit" and (history := self._retired(action.spec_hash)) is not None:
            self.record(history, Revived())  # asked for again (a revert): nothing is sent
        elif kind in ("submit", "retry") and submit:
            assert want is not None
            return await self.protocol.submit(want, rec, action.attempt or 0, revision,
                                              probe=self.probes_new_intents())
        return True
