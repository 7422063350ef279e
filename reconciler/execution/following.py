"""Following an operation the server has: polls, the last look, and what answers mean.

Accepted is forever: once the server showed an attempt, a 404 means "not visible (yet)",
looked at again until the not-found tolerance ends, then ``lost``. Before recording a
timeout or a loss, one last GET: a terminal answer wins. Server data never breaks the
record: an answer naming another id is logged and rewrites nothing; a status this version
does not know is recorded as it came and followed like ``pending``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Literal

import structlog

from reconciler.ailake.client import AiLakeClient, Operation
from reconciler.errors import ApiError
from reconciler.execution.timing import Timers
from reconciler.model.lifecycle import (
    Deferred,
    Event,
    Lost,
    NotVisible,
    ObservedFailed,
    ObservedPending,
    ObservedSucceeded,
    TimedOut,
)
from reconciler.model.manifest import ServiceCommand
from reconciler.model.records import IntentRecord
from reconciler.model.states import IntentState, OperationStatus
from reconciler.planning.policy import next_attempt_at

__all__ = ["DEFERRED", "NOT_FOUND", "Follower", "Lookup", "operation_error"]

log = structlog.get_logger("reconciler.engine")

Record = Callable[[IntentRecord | None, Event], IntentRecord | None]
#: what a lookup came to when it found no operation
Lookup = Literal["not found", "deferred"]
NOT_FOUND: Lookup = "not found"
DEFERRED: Lookup = "deferred"


def operation_error(op: Operation) -> dict[str, Any]:
    """The error object of a failed operation, as recorded."""
    if op.error is not None:
        return {"title": op.error.title, "status": op.error.status, "detail": op.error.detail}
    raw = op.raw.get("error")
    if isinstance(raw, Mapping):
        return dict(raw)
    return {"title": "Failed", "detail": "the operation failed without an error object"}


class Follower:
    """Reads operations and records what the server says of them."""

    def __init__(self, client: AiLakeClient, record: Record, timers: Timers) -> None:
        self.client = client
        self.record = record
        self.timers = timers
        self._reported: set[tuple[str, str]] = set()

    async def poll(self, rec: IntentRecord, command: ServiceCommand | None) -> None:
        """Read an accepted, in-flight operation and record what the server says."""
        found = await self.lookup(rec)
        if isinstance(found, Operation):
            self.observe(rec, found, command)
        elif found == NOT_FOUND:
            self._not_visible(rec)

    async def last_look(self, rec: IntentRecord, command: ServiceCommand | None,
                        reason: str) -> None:
        """Before recording a timeout: one GET; a terminal answer wins."""
        found = await self.lookup(rec)
        if found == DEFERRED:
            return
        if isinstance(found, Operation) and found.terminal:
            self.observe(rec, found, command)
            return
        self.record(rec, TimedOut(reason))

    async def lookup(self, rec: IntentRecord) -> Operation | Lookup:
        """GET the operation of ``rec``: the operation, ``NOT_FOUND`` for a 404, or
        ``DEFERRED`` when the lookup failed and the next look is scheduled (backoff)."""
        assert rec.operation_id is not None
        try:
            op = await self.client.get_operation(rec.operation_id)
        except ApiError as exc:
            delay = max(self.timers.poll_delay(rec.poll_count + 1).total_seconds(),
                        exc.delay or 0.0)
            self.record(rec, Deferred(self.timers.clock() + timedelta(seconds=delay)))
            log.warning("lookup_deferred", name=rec.name, operation_id=rec.operation_id,
                        status=exc.status, trace_id=exc.trace_id, error=str(exc),
                        retry_in=round(delay, 2))
            return DEFERRED
        return NOT_FOUND if op is None else op

    def observe(self, rec: IntentRecord, op: Operation, command: ServiceCommand | None, *,
                adopted: bool = False) -> IntentRecord | None:
        """Record what the server says of the operation of ``rec``."""
        op_id = self._recorded_id(rec, op)
        self.timers.found(rec)
        now = self.timers.clock()
        if op.status == OperationStatus.SUCCEEDED:
            return self.record(rec, ObservedSucceeded(op_id, op.result))
        if op.status == OperationStatus.FAILED:
            retry_at = next_attempt_at(rec, command, now)
            reason = (f"retry at {retry_at.strftime('%H:%M:%S')} UTC" if retry_at
                      else "no retry left")
            return self.record(rec, ObservedFailed(op_id, operation_error(op), retry_at,
                                                   reason))
        self._report_unknown(rec, op)
        first = adopted or rec.status != IntentState.PENDING
        polls = 0 if first else rec.poll_count + 1
        return self.record(rec, ObservedPending(op_id, self.timers.next_poll(rec, polls),
                                                polls, op.status))

    # ------------------------------------------------------------------ pieces

    def _not_visible(self, rec: IntentRecord) -> None:
        """An accepted operation answered 404: look again, or (past the tolerance,
        this 404 being the last look) record it lost."""
        until = self.timers.missing_until(rec)
        if until is None:
            self.record(rec, Lost(
                f"accepted, then not found on the server for "
                f"{self.timers.settings.not_found_tolerance:g}s (the not-found tolerance)"))
            return
        now = self.timers.clock()
        next_look = min(until, now + self.timers.poll_delay(rec.poll_count + 1))
        log.info("operation_not_visible", name=rec.name, operation_id=rec.operation_id,
                 lost_at=until.isoformat())
        self.record(rec, NotVisible(next_look))

    def _recorded_id(self, rec: IntentRecord, op: Operation) -> str:
        """The id to record: the one this attempt follows; an answer naming another id
        is logged and rewrites nothing."""
        if rec.operation_id is None or op.id == rec.operation_id:
            return op.id
        log.warning("operation_id_mismatch", name=rec.name, operation_id=rec.operation_id,
                    answered_id=op.id)
        return rec.operation_id

    def _report_unknown(self, rec: IntentRecord, op: Operation) -> None:
        if op.status == OperationStatus.PENDING:
            return
        key = (rec.operation_id or op.id, op.status)
        if key not in self._reported:
            self._reported.add(key)
            log.warning("unknown_operation_status", name=rec.name, operation_id=key[0],
                        status=op.status, action="followed like pending until its "
                        "deadline and a last look")
