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
from datetime import UTC, datetime

import structlog

from reconciler.ailake.client import AiLakeClient
from reconciler.errors import ApiError
from reconciler.execution.protocol import Protocol
from reconciler.model.lifecycle import (
    Event,
    GaveUp,
    Retired,
    RetryRequested,
    TimedOut,
    transition,
)
from reconciler.model.lifecycle import Transition as Transition
from reconciler.model.manifest import LoadResult
from reconciler.model.records import IntentRecord
from reconciler.model.states import SETTLED_BAD
from reconciler.planning.planner import Action, Desired, Limits, Plan, plan
from reconciler.store.sqlite import Store

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
    poll_initial: float = 1.0
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
    #: (the request timeout: no longer can the request still be in flight)
    settle: float = 30.0


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
    ) -> None:
        self.store = store
        self.settings = settings or EngineSettings()
        self.clock = clock
        self.listeners = list(listeners)
        self.protocol = Protocol(client, self.settings, self.record, clock,
                                 rng or random.Random())
        #: actions of the last reconcile that ended in an API error (not counting
        #: lookups deferred after a transient failure, which are routine)
        self.failed_actions = 0

    @property
    def client(self) -> AiLakeClient:
        """The API client the protocol talks through (replaceable, e.g. new credentials)."""
        return self.protocol.client

    @client.setter
    def client(self, client: AiLakeClient) -> None:
        self.protocol.client = client

    # ------------------------------------------------------------------ planning

    def plan(self, load: LoadResult, now: datetime | None = None) -> Plan:
        """What a reconcile would do now; reads the store only."""
        return plan(load.commands, self.store.intents(), now or self.clock(),
                    limits=self.settings.limits)

    async def reconcile(self, load: LoadResult, *, submit: bool = True) -> Plan:
        """Plan, then execute every due action concurrently. ``submit=False`` (shutting
        down) still polls and records, but starts nothing new."""
        recorded = self.store.intents()
        current = plan(load.commands, recorded, self.clock(), limits=self.settings.limits)
        self.protocol.new_pass()
        self.failed_actions = 0
        gate = asyncio.Semaphore(self.settings.max_concurrency)

        async def run(action: Action) -> None:
            async with gate:
                try:
                    ok = await self._execute(action, current, recorded, load.revision, submit)
                except ApiError as exc:  # already classified; never kills the loop
                    ok = False
                    log.warning("api_error", name=action.name, action=action.kind,
                                status=exc.status, trace_id=exc.trace_id, error=str(exc))
                if not ok:
                    self.failed_actions += 1

        await asyncio.gather(*(run(a) for a in current.executable))
        return current

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
        """Persist the transition ``event`` makes from ``rec``; tell the listeners."""
        step = transition(rec, event, self.clock())
        self.store.save(step)
        if step.transition is not None:
            self._notify(step.transition)
        return step.record

    def _notify(self, event: Transition) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break reconciliation
                log.exception("listener_failed", listener=repr(listener))

    # ------------------------------------------------------------------ actions

    async def _execute(self, action: Action, current: Plan,
                       recorded: Mapping[str, IntentRecord], revision: str,
                       submit: bool) -> bool:
        """Carry out one action; False when it ended in an API error worth counting."""
        want = current.desired.get(action.name)
        if want is not None and want.spec_hash != action.spec_hash:
            want = None  # a superseded record of this manifest
        rec = recorded.get(action.spec_hash)
        kind = action.kind
        if kind == "orphan":
            self.record(rec, Retired("superseded" if action.superseded else "orphaned",
                                     action.reason))
        elif kind == "give-up":
            self.record(rec, GaveUp(action.reason))
        elif kind == "timeout":
            self.record(rec, TimedOut(action.reason))
        elif kind == "poll":
            assert rec is not None
            await self.protocol.poll(rec, want)
        elif kind == "resolve":
            assert rec is not None
            return await self.protocol.resolve(rec, want, revision,
                                               may_submit=submit and action.may_submit)
        elif kind in ("submit", "retry") and submit:
            assert want is not None
            return await self.protocol.submit(want, rec, action.attempt or 0, revision)
        return True
