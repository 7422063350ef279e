"""The exactly-once protocol: probe, claim, submit, resolve, poll (DESIGN section 3).

1. A never-recorded intent is first *probed*: ``GET /operations/{id}`` for attempts 0, 1,
   2, ... until a 404, adopting whatever exists (an empty or lost store never re-runs a
   command).
2. Before a run POST, the attempt is claimed: recorded as ``submitting`` (write-ahead).
3. A POST whose outcome is unknown leaves the record ``submitting``; the next step is a
   lookup (``resolve``), and only a 404 allows the same attempt's POST again, once the
   settle window since its send has passed.

Every answer becomes a lifecycle event handed to ``record``, which persists the transition.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import structlog

from reconciler.ailake.client import AiLakeClient, Operation, ServiceInfo
from reconciler.errors import ApiError, OutcomeKind, classify
from reconciler.model.lifecycle import (
    Accepted,
    Claimed,
    Deferred,
    Event,
    NeverArrived,
    ObservedFailed,
    ObservedPending,
    ObservedSucceeded,
    Refused,
    Unresolvable,
)
from reconciler.model.manifest import ServiceCommand
from reconciler.model.records import IntentRecord
from reconciler.model.states import IntentState
from reconciler.planning.planner import Desired

if TYPE_CHECKING:
    from reconciler.execution.engine import EngineSettings

__all__ = ["Protocol"]

log = structlog.get_logger("reconciler.engine")

Record = Callable[[IntentRecord | None, Event], IntentRecord | None]
#: what a lookup came to when it found no operation
Lookup = Literal["not found", "deferred"]
NOT_FOUND: Lookup = "not found"
DEFERRED: Lookup = "deferred"


def _error_dict(exc: ApiError) -> dict[str, Any]:
    return {"title": exc.title or type(exc).__name__, "status": exc.status,
            "detail": exc.detail or str(exc), "traceId": exc.trace_id}


def _operation_error(op: Operation) -> dict[str, Any]:
    if op.error is not None:
        return {"title": op.error.title, "status": op.error.status, "detail": op.error.detail}
    raw = op.raw.get("error")
    if isinstance(raw, Mapping):
        return dict(raw)
    return {"title": "Failed", "detail": "the operation failed without an error object"}


class Protocol:
    """The protocol's steps for one engine: each asks the API, then records one event."""

    def __init__(self, client: AiLakeClient, settings: EngineSettings, record: Record,
                 clock: Callable[[], datetime], rng: random.Random) -> None:
        self.client = client
        self.settings = settings
        self.record = record
        self.clock = clock
        self.rng = rng
        self._services: dict[str, ServiceInfo] | None = None
        self._services_lock = asyncio.Lock()

    def new_pass(self) -> None:
        """Forget the service list: each pass resolves service names afresh."""
        self._services = None

    # ------------------------------------------------------------------ steps

    async def submit(self, want: Desired, rec: IntentRecord | None, attempt: int,
                     revision: str) -> bool:
        """Probe a never-recorded intent, then claim and POST ``attempt``."""
        if rec is None and await self.probe(want, None, revision) is not None:
            return True
        service_id = await self._service_id(want, rec, revision)
        if service_id is None:
            return True
        return await self._post(want, rec, attempt, service_id, revision)

    async def probe(self, want: Desired, rec: IntentRecord | None,
                    revision: str) -> str | None:
        """Adopt attempts 0, 1, ... of ``want`` found on the server; the status of the
        last one found, or None when attempt 0 is unknown to the server."""
        attempt, status = 0, None
        while True:
            op_id = want.operation_id(attempt)
            op = await self.client.get_operation(op_id)
            if op is None:
                return status
            rec = self.record(rec, Claimed(want.new_intent(), attempt, op_id, None, revision,
                                           adopted=True))
            assert rec is not None
            log.info("adopted", name=want.name, operation_id=op_id, attempt=attempt,
                     status=op.status)
            rec, status = self._observe(rec, op, want.command, adopted=True), op.status
            if rec is None or rec.status != IntentState.FAILED:
                return status
            attempt += 1

    async def resolve(self, rec: IntentRecord, want: Desired | None, revision: str, *,
                      may_submit: bool) -> bool:
        """Look up a POST whose outcome is unknown; re-send it only when a 404 proves,
        after the settle window, that it never arrived."""
        found = await self._lookup(rec)
        if isinstance(found, Operation):
            self._observe(rec, found, want.command if want else None)
            return True
        if found == DEFERRED:
            return True
        now = self.clock()
        sent_at = rec.attempt_started_at  # None: the server certainly refused it
        settled_at = (sent_at or now) + timedelta(seconds=self.settings.settle)
        if sent_at is not None and now < settled_at:
            self.record(rec, Deferred(settled_at))
            log.info("lookup_not_found_yet", name=rec.name, operation_id=rec.operation_id,
                     retry_at=settled_at.isoformat())
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

    async def poll(self, rec: IntentRecord, want: Desired | None) -> None:
        """Read an in-flight operation and record what the server says."""
        assert rec.operation_id is not None
        found = await self._lookup(rec)
        if found == DEFERRED:
            return
        op = found if isinstance(found, Operation) else Operation(
            rec.operation_id, "run-service-command", "failed", None, None,
            {"error": {"title": "Operation not found", "status": 404,
                       "detail": "the server no longer knows this operation"}})
        self._observe(rec, op, want.command if want else None)

    # ------------------------------------------------------------------ the POST

    async def _post(self, want: Desired, rec: IntentRecord | None, attempt: int,
                    service_id: str, revision: str) -> bool:
        """Claim ``attempt``, send its run POST, record the answer. False: refused for the
        credentials (the API failed this action, not the intent)."""
        op_id = want.operation_id(attempt)
        cmd = want.command
        claimed = self.record(rec, Claimed(want.new_intent(), attempt, op_id, service_id,
                                           revision))
        try:
            accepted = await self.client.run_command(
                service_id, cmd.command, operation_id=op_id,
                payload=dict(cmd.payload) if cmd.payload is not None else None,
                context=dict(cmd.context) if cmd.context is not None else None,
            )
        except ApiError as exc:
            return self._not_accepted(want, claimed, attempt, exc)
        self.record(claimed, Accepted(accepted.operation_id,
                                      self.clock() + self._poll_delay(0)))
        return True

    def _not_accepted(self, want: Desired, claimed: IntentRecord | None, attempt: int,
                      exc: ApiError) -> bool:
        """Record a run POST that got no 202. False: refused for the credentials (the API
        failed this action, not the intent)."""
        outcome = classify(exc)
        if outcome.kind is OutcomeKind.TERMINAL:
            self.record(claimed, Refused(_error_dict(exc)))
            return True
        # Unknown: it may run. Transient: it certainly did not. Refused for the token or
        # the organisation's entitlement (401/403): not this intent's fault, and fixed
        # without touching the manifest. In every case the next step is a lookup, and
        # only a 404 lets the same attempt be sent again.
        delay = max(self.settings.resolve_delay, outcome.delay or 0.0)
        credentials = outcome.kind is OutcomeKind.CREDENTIALS
        if credentials:
            delay = max(delay, self.settings.credentials_retry)
        self.record(claimed, Deferred(self.clock() + timedelta(seconds=delay),
                                      _error_dict(exc), unsent=outcome.unsent))
        log.warning("run_outcome_unknown" if outcome.kind is OutcomeKind.UNKNOWN
                    else "run_deferred", name=want.name,
                    operation_id=want.operation_id(attempt), attempt=attempt,
                    status=exc.status, trace_id=exc.trace_id, error=str(exc))
        return not credentials

    # ------------------------------------------------------------------ reading

    async def _lookup(self, rec: IntentRecord) -> Operation | Lookup:
        """GET the operation of ``rec``: the operation, ``NOT_FOUND`` for a 404, or
        ``DEFERRED`` when the lookup failed and the next look is scheduled (backoff)."""
        assert rec.operation_id is not None
        try:
            op = await self.client.get_operation(rec.operation_id)
        except ApiError as exc:
            delay = max(self._poll_delay(rec.poll_count + 1).total_seconds(),
                        exc.delay or 0.0)
            self.record(rec, Deferred(self.clock() + timedelta(seconds=delay)))
            log.warning("lookup_deferred", name=rec.name, operation_id=rec.operation_id,
                        status=exc.status, trace_id=exc.trace_id, error=str(exc),
                        retry_in=round(delay, 2))
            return DEFERRED
        return NOT_FOUND if op is None else op

    def _observe(self, rec: IntentRecord, op: Operation, command: ServiceCommand | None, *,
                 adopted: bool = False) -> IntentRecord | None:
        """Record what the server says of the operation of ``rec``."""
        now = self.clock()
        if op.status == "succeeded":
            return self.record(rec, ObservedSucceeded(op.id, op.result))
        if op.status == "failed":
            retry_at = self._next_attempt(rec, command, now)
            reason = (f"retry at {retry_at.strftime('%H:%M:%S')} UTC" if retry_at
                      else "no retry left")
            return self.record(rec, ObservedFailed(op.id, _operation_error(op), retry_at,
                                                   reason))
        # pending (or a status this version does not know: keep following it)
        first = adopted or rec.status == IntentState.SUBMITTING
        polls = 0 if first else rec.poll_count + 1
        return self.record(rec, ObservedPending(op.id, now + self._poll_delay(polls), polls))

    async def _service_id(self, want: Desired, rec: IntentRecord | None,
                          revision: str) -> str | None:
        ref = want.command.service
        if ref.id is not None:
            return ref.id
        if rec is not None and rec.service_id:
            return rec.service_id
        async with self._services_lock:
            if self._services is None:
                self._services = {s.name: s for s in await self.client.list_services()}
        info = self._services.get(ref.name or "")
        if info is not None:
            return info.id
        error = {"title": "Service not found",
                 "detail": f"no AI Lake service is named {ref.name!r} (GET /services lists "
                           f"{', '.join(sorted(self._services)) or 'none'})"}
        self.record(rec, Unresolvable(want.new_intent(), error, revision))
        return None

    # ------------------------------------------------------------------ timing

    def _next_attempt(self, rec: IntentRecord, command: ServiceCommand | None,
                      now: datetime) -> datetime | None:
        """When to retry after this failure, or None: stall (no retries left, past the
        deadline, or no longer desired)."""
        if command is None:
            return None
        failures = rec.attempts - rec.retry_base
        if failures > command.retry.limit:
            return None
        at = now + command.retry.delay(failures)
        first = rec.first_submitted_at or now
        if at >= first + command.timeout:
            return None
        return at

    def _poll_delay(self, polls: int) -> timedelta:
        s = self.settings
        base = min(s.poll_max, s.poll_initial * (2 ** min(polls, 16)))
        return timedelta(seconds=base * (1 + self.rng.uniform(-s.jitter, s.jitter)))
