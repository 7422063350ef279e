"""The engine: executes a plan against the AI Lake API and records every transition.

The protocol that makes "exactly once" hold across crashes (DESIGN section 3):

1. A never-recorded intent is first *probed*: ``GET /operations/{id}`` for attempts
   0, 1, 2, ... until a 404, adopting whatever exists (an empty or lost store never
   re-runs a command).
2. Before a run POST, the attempt is recorded as ``submitting`` (write-ahead).
3. A POST whose outcome is unknown leaves the record ``submitting``; the next step is a
   lookup (``resolve``), and only a 404 allows the same attempt's POST again.

Each transition is one store transaction followed by one :class:`Transition` event to
the listeners (structured logs, metrics). I/O lives here; decisions live in
:mod:`reconciler.planning.planner`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog

from reconciler.ailake.client import AiLakeClient, Operation, ServiceInfo
from reconciler.errors import (
    ApiError,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
)
from reconciler.model.manifest import LoadResult, ServiceCommand
from reconciler.model.records import IntentRecord
from reconciler.planning.planner import Action, Desired, Limits, Plan, plan
from reconciler.store.sqlite import Store

__all__ = ["Engine", "EngineSettings", "Transition", "utcnow"]

log = structlog.get_logger("reconciler.execution.engine")


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


@dataclass(frozen=True)
class Transition:
    """One recorded change of one intent, for logs and metrics."""

    name: str
    service: str
    command: str
    spec_hash: str
    state: str
    previous: str | None
    operation_id: str | None = None
    attempt: int | None = None
    revision: str = ""
    #: seconds from submission to the terminal state, on terminal transitions
    duration: float | None = None
    #: succeeded, failed or timed_out, on terminal transitions of an operation
    outcome: str | None = None
    error: Mapping[str, Any] | None = None
    reason: str = ""


Listener = Callable[[Transition], None]

#: refusals that concern the token or the organisation, never one intent
CREDENTIAL_STATUSES = frozenset({401, 403})


class _Deferred(Exception):
    """A lookup failed; the intent's next look is scheduled. Ends the action quietly."""


def _error_dict(exc: ApiError) -> dict[str, Any]:
    return {
        "title": exc.title or type(exc).__name__,
        "status": exc.status,
        "detail": exc.detail or str(exc),
        "traceId": exc.trace_id,
    }


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
        self.client = client
        self.store = store
        self.settings = settings or EngineSettings()
        self.clock = clock
        self.rng = rng or random.Random()
        self.listeners = list(listeners)
        self._services: dict[str, ServiceInfo] | None = None
        #: actions of the last reconcile that ended in an API error (not counting
        #: lookups deferred after a transient failure, which are routine)
        self.failed_actions = 0
        self._services_lock = asyncio.Lock()

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
        self._services = None
        self.failed_actions = 0
        gate = asyncio.Semaphore(self.settings.max_concurrency)

        async def run(action: Action) -> None:
            async with gate:
                try:
                    await self._execute(action, current, recorded, load.revision, submit)
                except _Deferred:
                    pass  # a transient lookup failure: recorded and logged by _defer
                except ApiError as exc:  # already classified; never kills the loop
                    self.failed_actions += 1
                    log.warning("api_error", name=action.name, action=action.kind,
                                status=exc.status, trace_id=exc.trace_id, error=str(exc))

        await asyncio.gather(*(run(a) for a in current.executable))
        return current

    # ------------------------------------------------------------------ actions

    async def _execute(self, action: Action, current: Plan,
                       recorded: Mapping[str, IntentRecord], revision: str,
                       submit: bool) -> None:
        want = current.desired.get(action.name)
        if want is not None and want.spec_hash != action.spec_hash:
            want = None  # a superseded record of this manifest
        rec = recorded.get(action.spec_hash)
        kind = action.kind
        if kind == "orphan":
            assert rec is not None
            why: Literal["orphaned", "superseded"] = (
                "superseded" if action.name in current.desired else "orphaned")
            self.store.retire(rec.spec_hash, why=why, now=self.clock())
            self._emit(rec, why, reason=action.reason)
        elif kind == "give-up":
            assert rec is not None
            error = {"title": "Gave up", "detail": action.reason}
            self.store.mark_failed(rec.spec_hash, operation_id=None, now=self.clock(),
                                   error=error, next_attempt_at=None)
            self._emit(rec, "stalled", error=error, reason=action.reason)
        elif kind == "timeout":
            assert rec is not None
            error = {"title": "Timed out", "detail": action.reason}
            now = self.clock()
            self.store.mark_failed(rec.spec_hash, operation_id=rec.operation_id, now=now,
                                   error=error, next_attempt_at=None, outcome="timed_out")
            self._emit(rec, "stalled", error=error, outcome="timed_out",
                       duration=self._since_submission(rec, now), reason=action.reason)
        elif kind == "poll":
            assert rec is not None
            await self._poll(rec, want)
        elif kind == "resolve":
            assert rec is not None
            await self._resolve(rec, want, action, revision, submit)
        elif kind in ("submit", "retry") and submit:
            assert want is not None
            await self._submit(want, rec, action, revision)

    async def _submit(self, want: Desired, rec: IntentRecord | None, action: Action,
                      revision: str) -> None:
        attempt = action.attempt or 0
        if rec is None:
            # Probe first: an empty or lost store must never re-run a command.
            found = await self._probe(want, revision)
            if found is not None:
                return
        service_id = await self._service_id(want, rec, revision)
        if service_id is None:
            return
        await self._post(want, attempt, service_id, revision, previous=rec)

    async def _probe(self, want: Desired, revision: str) -> IntentRecord | None:
        """Adopt attempts 0, 1, ... of ``want`` that exist on the server; None if none."""
        attempt = 0
        adopted: IntentRecord | None = None
        while True:
            op_id = want.operation_id(attempt)
            op = await self.client.get_operation(op_id)
            if op is None:
                return adopted
            now = self.clock()
            self.store.begin_attempt(want.new_intent(), attempt=attempt, operation_id=op_id,
                                     service_id=None, now=now, revision=revision)
            adopted = self.store.intent(want.spec_hash)
            assert adopted is not None
            log.info("adopted", name=want.name, operation_id=op_id, attempt=attempt,
                     status=op.status)
            await self._apply(adopted, op, want.command, adopted_attempt=True)
            adopted = self.store.intent(want.spec_hash)
            assert adopted is not None
            if adopted.status != "failed":
                return adopted
            attempt += 1

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
        self.store.record_stalled(want.new_intent(), now=self.clock(), error=error,
                                  revision=revision)
        self._emit_desired(want, "stalled", error=error, revision=revision)
        return None

    async def _post(self, want: Desired, attempt: int, service_id: str, revision: str,
                    previous: IntentRecord | None) -> None:
        op_id = want.operation_id(attempt)
        cmd = want.command
        self.store.begin_attempt(want.new_intent(), attempt=attempt, operation_id=op_id,
                                 service_id=service_id, now=self.clock(), revision=revision)
        self._emit_desired(want, "submitting", previous=previous.status if previous else None,
                           operation_id=op_id, attempt=attempt, revision=revision)
        try:
            accepted = await self.client.run_command(
                service_id, cmd.command, operation_id=op_id,
                payload=dict(cmd.payload) if cmd.payload is not None else None,
                context=dict(cmd.context) if cmd.context is not None else None,
            )
        except (OutcomeUnknownError, TemporaryError, PermanentError) as exc:
            if isinstance(exc, PermanentError) and exc.status not in CREDENTIAL_STATUSES:
                self._refused(want, op_id, attempt, revision, exc)
                return
            # Unknown: it may run. Temporary: it certainly did not. Refused for the token
            # or the organisation's entitlement (401/403): not this intent's fault, and
            # fixed without touching the manifest. In every case the next step is a
            # lookup, and only a 404 lets the same attempt be sent again.
            delay = max(self.settings.resolve_delay, getattr(exc, "delay", None) or 0.0)
            if isinstance(exc, PermanentError):
                delay = max(delay, self.settings.credentials_retry)
                self.failed_actions += 1
            now = self.clock()
            self.store.defer(want.spec_hash, now=now,
                             next_poll_at=now + timedelta(seconds=delay),
                             error=_error_dict(exc),
                             unsent=not isinstance(exc, OutcomeUnknownError))
            log.warning("run_outcome_unknown" if isinstance(exc, OutcomeUnknownError)
                        else "run_deferred", name=want.name, operation_id=op_id,
                        attempt=attempt, status=exc.status, trace_id=exc.trace_id,
                        error=str(exc))
            return
        now = self.clock()
        self.store.mark_pending(want.spec_hash, operation_id=accepted.operation_id,
                                sent_operation_id=op_id, now=now,
                                next_poll_at=now + self._poll_delay(0))
        self._emit_desired(want, "pending", previous="submitting",
                           operation_id=accepted.operation_id, attempt=attempt,
                           revision=revision)

    def _refused(self, want: Desired, op_id: str, attempt: int, revision: str,
                 exc: PermanentError) -> None:
        """The API refused this request for good (400, 404, ...): stall, no retry."""
        error = _error_dict(exc)
        self.store.mark_failed(want.spec_hash, operation_id=op_id, now=self.clock(),
                               error=error, next_attempt_at=None)
        self._emit_desired(want, "stalled", previous="submitting", operation_id=op_id,
                           attempt=attempt, revision=revision, error=error,
                           outcome="failed", reason="the API refused the request")

    async def _resolve(self, rec: IntentRecord, want: Desired | None, action: Action,
                       revision: str, submit: bool) -> None:
        assert rec.operation_id is not None
        op = await self._lookup(rec)
        if op is not None:
            await self._apply(rec, op, want.command if want else None)
            return
        # 404. A POST sent moments ago (by a process that then crashed, or one that timed
        # out) may still be in flight or queued on the server: only once ``settle`` has
        # passed since it was sent does a 404 prove it never arrived.
        now = self.clock()
        sent_at = rec.attempt_started_at  # None: the server certainly refused it
        settled_at = (sent_at or now) + timedelta(seconds=self.settings.settle)
        if sent_at is not None and now < settled_at:
            self.store.defer(rec.spec_hash, now=now, next_poll_at=settled_at)
            log.info("lookup_not_found_yet", name=rec.name, operation_id=rec.operation_id,
                     retry_at=settled_at.isoformat())
            return
        # The POST never reached the server.
        if want is None or not action.may_submit or not submit:
            self.store.forget_attempt(rec.spec_hash, operation_id=rec.operation_id,
                                      now=self.clock())
            log.info("attempt_dropped", name=rec.name, operation_id=rec.operation_id,
                     reason="never reached the server and is no longer to be sent")
            return
        service_id = rec.service_id or await self._service_id(want, rec, revision)
        if service_id is None:
            return
        await self._post(want, rec.current_attempt, service_id, revision, previous=rec)

    async def _poll(self, rec: IntentRecord, want: Desired | None) -> None:
        assert rec.operation_id is not None
        op = await self._lookup(rec)
        if op is None:
            op = Operation(rec.operation_id, "run-service-command", "failed", None, None,
                           {"error": {"title": "Operation not found", "status": 404,
                                      "detail": "the server no longer knows this operation"}})
        await self._apply(rec, op, want.command if want else None)

    async def _lookup(self, rec: IntentRecord) -> Operation | None:
        """GET the operation of ``rec`` (None: 404). A failed lookup is scheduled again
        with backoff and ends the action (:class:`_Deferred`)."""
        assert rec.operation_id is not None
        try:
            return await self.client.get_operation(rec.operation_id)
        except (TemporaryError, PermanentError) as exc:
            self._defer(rec, exc)
            raise _Deferred from exc

    async def _apply(self, rec: IntentRecord, op: Operation, command: ServiceCommand | None,
                     *, adopted_attempt: bool = False) -> None:
        """Record what the server says of the operation of ``rec``."""
        now = self.clock()
        if op.status == "succeeded":
            self.store.mark_succeeded(rec.spec_hash, operation_id=op.id, now=now,
                                      result=op.result)
            self._emit(rec, "succeeded", operation_id=op.id, outcome="succeeded",
                       duration=self._since_submission(rec, now))
        elif op.status == "failed":
            error = self._op_error(op)
            next_at = self._next_attempt(rec, command, now)
            self.store.mark_failed(rec.spec_hash, operation_id=op.id, now=now, error=error,
                                   next_attempt_at=next_at)
            self._emit(rec, "failed" if next_at else "stalled", operation_id=op.id,
                       outcome="failed", error=error,
                       duration=self._since_submission(rec, now),
                       reason=f"retry at {next_at.strftime('%H:%M:%S')} UTC" if next_at
                       else "no retry left")
        else:  # pending (or a status this version does not know: keep following it)
            polls = 0 if adopted_attempt or rec.status == "submitting" else rec.poll_count + 1
            self.store.mark_pending(rec.spec_hash, operation_id=op.id,
                                    sent_operation_id=rec.operation_id or op.id, now=now,
                                    next_poll_at=now + self._poll_delay(polls),
                                    poll_count=polls)
            if rec.status != "pending":
                self._emit(rec, "pending", operation_id=op.id)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _op_error(op: Operation) -> dict[str, Any]:
        if op.error is not None:
            return {"title": op.error.title, "status": op.error.status,
                    "detail": op.error.detail}
        raw = op.raw.get("error")
        if isinstance(raw, Mapping):
            return dict(raw)
        return {"title": "Failed", "detail": "the operation failed without an error object"}

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

    def _defer(self, rec: IntentRecord, exc: ApiError) -> None:
        delay = max(self._poll_delay(rec.poll_count + 1).total_seconds(),
                    getattr(exc, "delay", None) or 0.0)
        now = self.clock()
        self.store.defer(rec.spec_hash, now=now, next_poll_at=now + timedelta(seconds=delay))
        log.warning("lookup_deferred", name=rec.name, operation_id=rec.operation_id,
                    status=exc.status, trace_id=exc.trace_id, error=str(exc),
                    retry_in=round(delay, 2))

    @staticmethod
    def _since_submission(rec: IntentRecord, now: datetime) -> float | None:
        start = rec.attempt_started_at
        return max(0.0, (now - start).total_seconds()) if start is not None else None

    def _emit(self, rec: IntentRecord, state: str, **extra: Any) -> None:
        event = Transition(
            name=rec.name, service=rec.service, command=rec.command,
            spec_hash=rec.spec_hash, state=state, previous=rec.status,
            operation_id=extra.pop("operation_id", rec.operation_id),
            attempt=rec.current_attempt, revision=rec.revision, **extra,
        )
        self._notify(event)

    def _emit_desired(self, want: Desired, state: str, *, previous: str | None = None,
                      **extra: Any) -> None:
        c = want.command
        event = Transition(name=c.name, service=c.service.label, command=c.command,
                           spec_hash=want.spec_hash, state=state, previous=previous, **extra)
        self._notify(event)

    def _notify(self, event: Transition) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break reconciliation
                log.exception("listener_failed", listener=repr(listener))
