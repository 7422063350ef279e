"""The exactly-once protocol: probe, claim, submit, resolve (DESIGN section 3).

1. *Probe* (when the epoch asks for it): ``GET /operations/{id}`` for attempts n, n+1, ...
   until a 404, adopting whatever exists, so a new, lost or foreign store never re-runs a
   command.
2. *Claim* before the POST: the attempt is recorded as ``submitting`` by a compare-and-set;
   a process that loses the claim does not POST. A leader claims and sends only while its
   lease (the fence) stays valid for the request.
3. *Resolve* a POST whose outcome is unknown: look it up; a 404 allows the same attempt's
   POST again only once the settle window since its send has passed on both clocks.

Every answer becomes a lifecycle event handed to ``record``, which persists the transition.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog

from reconciler.ailake.client import AiLakeClient, Operation, ServiceInfo
from reconciler.errors import ApiError, OutcomeKind, classify
from reconciler.execution.following import DEFERRED, Follower, Record
from reconciler.execution.timing import Timers
from reconciler.model.lifecycle import (
    Accepted,
    Claimed,
    Deferred,
    NeverArrived,
    Refused,
    Unresolvable,
)
from reconciler.model.records import IntentRecord
from reconciler.model.states import IntentState, OperationStatus
from reconciler.planning.planner import Desired

__all__ = ["Protocol"]

log = structlog.get_logger("reconciler.engine")

#: the service list is kept across passes, refreshed at this age, on a name it does not
#: know (at most every ``SERVICES_MIN_REFRESH`` seconds) and after a 404 from a run
SERVICES_MAX_AGE = 600.0
SERVICES_MIN_REFRESH = 5.0

#: how long a POST starting now may take: the time left on a leader's lease (None: no
#: bound, there is no election); below ``MIN_POST_WINDOW`` nothing is sent
Fence = Callable[[], float | None]
MIN_POST_WINDOW = 1.0


def _error_dict(exc: ApiError) -> dict[str, Any]:
    return {"title": exc.title or type(exc).__name__, "status": exc.status,
            "detail": exc.detail or str(exc), "traceId": exc.trace_id}


class Protocol:
    """The protocol's steps for one engine: each asks the API, then records one event."""

    def __init__(self, client: AiLakeClient, record: Record, timers: Timers, *,
                 resolve_delay: float, credentials_retry: float, fence: Fence) -> None:
        self.record = record
        self.timers = timers
        self.follower = Follower(client, record, timers)
        self.resolve_delay = resolve_delay
        self.credentials_retry = credentials_retry
        self.fence = fence
        self._services: dict[str, ServiceInfo] | None = None
        self._services_at = 0.0  # monotonic time of the last listing
        self._services_lock = asyncio.Lock()

    @property
    def client(self) -> AiLakeClient:
        return self.follower.client

    @client.setter
    def client(self, client: AiLakeClient) -> None:
        self.follower.client = client

    def new_pass(self) -> None:
        """Forget a service list older than ``SERVICES_MAX_AGE``."""
        if self.timers.monotonic() - self._services_at > SERVICES_MAX_AGE:
            self._services = None

    # ------------------------------------------------------------------ steps

    async def submit(self, want: Desired, rec: IntentRecord | None, attempt: int,
                     revision: str, *, probe: bool) -> bool:
        """Probe (when asked) a never-recorded intent, then claim and POST ``attempt``."""
        if probe and rec is None and await self.probe(want, None, revision) is not None:
            return True
        if rec is not None and await self._settled_by_a_look(want, rec):
            return True
        service_id = await self._service_id(want, rec, revision)
        if service_id is None:
            return True
        return await self._post(want, rec, attempt, service_id, revision)

    async def probe(self, want: Desired, rec: IntentRecord | None,
                    revision: str) -> str | None:
        """Adopt attempts of ``want`` found on the server, from the next one ``rec`` has
        not recorded; the status of the last one found, or None when none was found."""
        attempt = rec.attempts if rec is not None else 0
        status = None
        while True:
            op_id = want.operation_id(attempt)
            op = await self.client.get_operation(op_id)
            if op is None:
                return status
            rec = self._adopt(want, rec, attempt, op, revision)
            status = op.status
            if rec is None or rec.status != IntentState.FAILED:
                return status
            attempt += 1

    async def resolve(self, rec: IntentRecord, want: Desired | None, revision: str, *,
                      may_submit: bool) -> bool:
        """Look up a POST whose outcome is unknown; re-send it only when a 404 proves,
        after the settle window, that it never arrived."""
        found = await self.follower.lookup(rec)
        if isinstance(found, Operation):
            self.follower.observe(rec, found, want.command if want else None)
            return True
        if found == DEFERRED:
            return True
        settled_at = self.timers.settled_at(rec)
        if settled_at is not None:
            next_look = min(settled_at,
                            self.timers.clock() + self.timers.poll_delay(rec.poll_count + 1))
            self.record(rec, Deferred(next_look))
            log.info("lookup_not_found_yet", name=rec.name, operation_id=rec.operation_id,
                     settles_at=settled_at.isoformat())
            return True
        if want is None or not may_submit:
            self.record(rec, NeverArrived())
            log.info("attempt_dropped", name=rec.name, operation_id=rec.operation_id,
                     reason="never reached the server and is no longer to be sent")
            return True
        service_id = rec.service_id or await self._service_id(want, rec, revision)
        if service_id is None:
            return True
        return await self._post(want, rec, rec.current_attempt, service_id, revision)

    # ------------------------------------------------------------------ the POST

    async def _post(self, want: Desired, rec: IntentRecord | None, attempt: int,
                    service_id: str, revision: str) -> bool:
        """Claim ``attempt``, send its run POST, record the answer. False: refused for the
        credentials (the API failed this action, not the intent)."""
        if self._fenced():
            log.warning("submit_fenced", name=want.name, attempt=attempt + 1,
                        reason="leadership not held for the request; nothing sent")
            return True
        op_id = want.operation_id(attempt)
        claimed = self.record(rec, Claimed(want.new_intent(), attempt, op_id, service_id,
                                           revision))
        if claimed is None:
            log.info("claim_lost", name=want.name, operation_id=op_id,
                     reason="another process claimed this attempt first; it sends it")
            return True
        within = self.fence()  # the lease may have ended while the claim was written
        if within is not None and within < MIN_POST_WINDOW:
            self.record(claimed, Deferred(self.timers.clock(), unsent=True))
            return True
        self.timers.sent(claimed)
        cmd = want.command
        try:
            accepted = await self.client.run_command(
                service_id, cmd.command, operation_id=op_id,
                payload=dict(cmd.payload) if cmd.payload is not None else None,
                context=dict(cmd.context) if cmd.context is not None else None,
                within=within,
            )
        except ApiError as exc:
            return self._not_accepted(want, claimed, attempt, exc)
        self.record(claimed, Accepted(accepted.operation_id, self.timers.next_poll(claimed, 0)))
        return True

    def _not_accepted(self, want: Desired, claimed: IntentRecord, attempt: int,
                      exc: ApiError) -> bool:
        """Record a run POST that got no 202. False: refused for the credentials (the API
        failed this action, not the intent)."""
        outcome = classify(exc)
        if outcome.kind is OutcomeKind.TERMINAL:
            if exc.status == 404:
                self._services = None  # a service id from the list may be stale
            self.record(claimed, Refused(_error_dict(exc)))
            return True
        # Unknown: it may run. Transient: it certainly did not. Refused for the token or
        # the organisation's entitlement (401/403): not this intent's fault, and fixed
        # without touching the manifest. In every case the next step is a lookup, and
        # only a 404 lets the same attempt be sent again.
        delay = max(self.resolve_delay, outcome.delay or 0.0)
        credentials = outcome.kind is OutcomeKind.CREDENTIALS
        if credentials:
            delay = max(delay, self.credentials_retry)
        self.record(claimed, Deferred(self.timers.clock() + timedelta(seconds=delay),
                                      _error_dict(exc), unsent=outcome.unsent))
        log.warning("run_outcome_unknown" if outcome.kind is OutcomeKind.UNKNOWN
                    else "run_deferred", name=want.name,
                    operation_id=want.operation_id(attempt), attempt=attempt + 1,
                    status=exc.status, trace_id=exc.trace_id, error=str(exc))
        return not credentials

    # ------------------------------------------------------------------ pieces

    async def _service_named(self, name: str) -> ServiceInfo | None:
        """The service called ``name`` from the kept list, listing again when there is
        none, or when ``name`` is not in it and the list is not brand new."""
        async with self._services_lock:
            stale = self.timers.monotonic() - self._services_at > SERVICES_MIN_REFRESH
            if self._services is None or (name not in self._services and stale):
                self._services = {s.name: s for s in await self.client.list_services()}
                self._services_at = self.timers.monotonic()
            return self._services.get(name)

    def _fenced(self) -> bool:
        within = self.fence()
        return within is not None and within < MIN_POST_WINDOW

    async def _settled_by_a_look(self, want: Desired, rec: IntentRecord) -> bool:
        """``reconciler retry`` of an attempt the server had accepted (lost, timed out):
        look at it once more first. True when the answer settles the intent (it
        succeeded, or runs again), so no new attempt is sent."""
        if rec.retry_base != rec.attempts or rec.accepted_at is None:
            return False
        assert rec.operation_id is not None
        op = await self.client.get_operation(rec.operation_id)
        if op is None or op.status == OperationStatus.FAILED:
            return False
        log.info("retry_found_the_operation", name=rec.name, operation_id=rec.operation_id,
                 status=op.status, action="recorded; no new attempt")
        self.follower.observe(rec, op, want.command)
        return True

    def _adopt(self, want: Desired, rec: IntentRecord | None, attempt: int, op: Operation,
               revision: str) -> IntentRecord | None:
        """Record attempt ``attempt``, found on the server, and what it came to."""
        op_id = want.operation_id(attempt)
        claimed = self.record(rec, Claimed(want.new_intent(), attempt, op_id, None, revision,
                                           adopted=True))
        if claimed is None:
            return None  # another process recorded it first
        log.info("adopted", name=want.name, operation_id=op_id, attempt=attempt + 1,
                 status=op.status)
        return self.follower.observe(claimed, op, want.command, adopted=True)

    async def _service_id(self, want: Desired, rec: IntentRecord | None,
                          revision: str) -> str | None:
        ref = want.command.service
        if ref.id is not None:
            return ref.id
        if rec is not None and rec.service_id:
            return rec.service_id
        info = await self._service_named(ref.name or "")
        if info is not None:
            return info.id
        assert self._services is not None
        error = {"title": "Service not found",
                 "detail": f"no AI Lake service is named {ref.name!r} (GET /services lists "
                           f"{', '.join(sorted(self._services)) or 'none'})"}
        self.record(rec, Unresolvable(want.new_intent(), error, revision))
        return None
