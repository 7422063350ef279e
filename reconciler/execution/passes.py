"""One pass of the engine: a plan's actions, run under the API concurrency bound.

With a budget (the daemon's passes), a pass does not stop at the plan's actions:

- **a freed slot is filled at once**: when an operation ends (or a start comes to nothing),
  the next start the in-flight limits held back (:attr:`Plan.queued`, in plan order) is made,
  without waiting for the next pass and its plan;
- **an operation is followed while its next look is near**: after a step, the intent's next
  poll or lookup, if due within :data:`FOLLOW_HORIZON` and the budget, is made in the same
  pass (the step the planner would choose: :func:`~reconciler.planning.planner.follow_action`).

The budget bounds how stale the plan's queue may get (a pass plans once); :meth:`Pass.close`
(a trigger, SIGTERM) ends it early: nothing new starts, and the steps running finish and
record. Without a budget a pass is exactly the plan's executable actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import structlog

from reconciler.errors import ApiError
from reconciler.model.records import IntentRecord
from reconciler.planning.capacity import Capacity, Limits
from reconciler.planning.planner import Action, Plan, follow_action

__all__ = ["FOLLOW_HORIZON", "Execute", "Pass"]

log = structlog.get_logger("reconciler.engine")

#: seconds: an operation whose next look falls within this is followed in the same pass
FOLLOW_HORIZON = 2.0

#: carries out one action on the record given; False when it ended in an API error worth
#: counting
Execute = Callable[[Action, IntentRecord | None], Awaitable[bool]]


class Pass:
    """A plan's actions, the starts its queue holds back, and the follow-ups they lead to."""

    def __init__(self, current: Plan, recorded: Mapping[str, IntentRecord], execute: Execute,
                 *, limits: Limits, concurrency: int, clock: Callable[[], datetime],
                 submit: bool, budget: float | None) -> None:
        self.plan = current
        self.records = dict(recorded)
        self.execute = execute
        self.clock = clock
        self.submit = submit
        self.budget = budget
        self.failed = 0
        self._gate = asyncio.Semaphore(concurrency)
        self._ends = time.monotonic() + (budget or 0.0)
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = Capacity.taken_by(recorded.values(), limits)
        #: spec hash -> service of a start holding a slot it has not claimed yet
        self._held: dict[str, str] = {}
        self._queue: dict[str, deque[tuple[int, Action]]] = {}

    # ------------------------------------------------------------------ control

    def close(self) -> None:
        """Start nothing more: running steps finish and record, sleeping follow-ups end."""
        self._closed.set()

    @property
    def open(self) -> bool:
        """Whether the pass may still start a step of its own (a refill, a follow-up)."""
        return (self.budget is not None and not self._closed.is_set()
                and time.monotonic() < self._ends)

    async def run(self) -> None:
        """Every executable action of the plan, then (with a budget) refills and
        follow-ups, until no step is left. The first unexpected error is raised once
        the others ended."""
        for action in self.plan.executable:
            want = self.plan.desired.get(action.name)
            if action.kind in ("submit", "retry") and want is not None:
                self._hold(action.spec_hash, want.command.service.label)
            self._spawn(action)
        if self.budget is not None:
            self._enqueue(self.plan.queued)
        await self._drain()

    # ------------------------------------------------------------------ recording

    def moved(self, before: IntentRecord | None, after: IntentRecord | None,
              spec_hash: str) -> None:
        """The engine recorded ``after`` for ``spec_hash`` (None: forgotten): keep the
        record, count the slot it takes or frees, and fill a freed one."""
        if after is None:
            self.records.pop(spec_hash, None)
        else:
            self.records[spec_hash] = after
        was = before is not None and before.in_flight
        now = after is not None and after.in_flight
        if now and not was and after is not None:
            if self._held.pop(spec_hash, None) is None:
                self._slots.take(after.service)
        elif was and not now and before is not None:
            self._slots.free(before.service)
            self._refill()

    # ------------------------------------------------------------------ steps

    def _spawn(self, action: Action) -> None:
        task = asyncio.ensure_future(self._carry(action))
        self._tasks.add(task)

    async def _carry(self, action: Action) -> None:
        """One action, then its follow-ups while they are near; then a slot it held
        without claiming is freed."""
        step: Action | None = action
        while step is not None:
            async with self._gate:
                try:
                    ok = await self.execute(step, self.records.get(step.spec_hash))
                except ApiError as exc:  # already classified; never kills the loop
                    ok = False
                    log.warning("api_error", name=step.name, action=step.kind,
                                status=exc.status, trace_id=exc.trace_id, error=str(exc))
            if not ok:
                self.failed += 1
            step = await self._follow_up(step.spec_hash)
        service = self._held.pop(action.spec_hash, None)
        if service is not None:
            self._slots.free(service)
        self._refill()

    async def _follow_up(self, spec_hash: str) -> Action | None:
        """The next look at ``spec_hash`` if it is in flight and due before long (within
        :data:`FOLLOW_HORIZON` and the budget); None: the next pass takes it."""
        rec = self.records.get(spec_hash)
        if not self.open or rec is None or not rec.in_flight:
            return None
        wait = 0.0 if rec.next_poll_at is None else (
            rec.next_poll_at - self.clock()).total_seconds()
        if wait > min(FOLLOW_HORIZON, self._ends - time.monotonic()):
            return None
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), wait)
        rec = self.records.get(spec_hash)
        if not self.open or rec is None or not rec.in_flight:
            return None
        want = self.plan.desired.get(rec.name)
        command = want.command if want is not None and want.spec_hash == spec_hash else None
        action = follow_action(rec, command, self.clock())
        return None if action.kind == "noop" else action  # not due by this clock: next pass

    async def _drain(self) -> None:
        """Wait for every step, spawned ones included. On an error, nothing new starts;
        on cancellation, the steps are cancelled too."""
        error: BaseException | None = None
        try:
            while self._tasks:
                done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                self._tasks -= done
                for task in done:
                    if task.cancelled():
                        continue
                    if task.exception() is not None and error is None:
                        error = task.exception()
                        self.close()
        except asyncio.CancelledError:
            for task in self._tasks:
                task.cancel()
            raise
        if error is not None:
            raise error

    # ------------------------------------------------------------------ slots

    def _hold(self, spec_hash: str, service: str) -> None:
        """A start takes a slot on ``service`` until it claims it (or comes to nothing)."""
        self._held[spec_hash] = service
        self._slots.take(service)

    def _enqueue(self, starts: tuple[Action, ...]) -> None:
        for index, action in enumerate(starts):
            want = self.plan.desired.get(action.name)
            if want is not None:
                self._queue.setdefault(want.command.service.label, deque()).append(
                    (index, action))
        self._refill()

    def _refill(self) -> None:
        """Start held-back starts, in plan order, while the limits have room."""
        while self.open and self.submit and self._queue:
            ready = [(q[0][0], service) for service, q in self._queue.items()
                     if self._slots.has_room(service)]
            if not ready:
                return
            _, service = min(ready)
            _, action = self._queue[service].popleft()
            if not self._queue[service]:
                del self._queue[service]
            self._hold(action.spec_hash, service)
            self._spawn(action)
