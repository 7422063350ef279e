"""The daemon's structured log lines about operations: one per transition, and the
"still pending" lines of long-running operations.

Split out of :mod:`reconciler.runtime.daemon` (which re-exports :func:`log_transition`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from reconciler.execution.engine import Engine, Transition
from reconciler.model.lifecycle import SETTLED_BAD, IntentState
from reconciler.observe.status import progress

if TYPE_CHECKING:
    from reconciler.runtime.daemon import Daemon

__all__ = ["log_progress", "log_transition"]

log = structlog.get_logger("reconciler.runtime.daemon")


def log_transition(event: Transition) -> None:
    """The engine listener that writes one structured log event per transition."""
    fields: dict[str, Any] = {
        "name": event.name, "service": event.service, "command": event.command,
        "state": event.state, "previous": event.previous,
        "operation_id": event.operation_id, "attempt": event.attempt,
        "revision": event.revision,
    }
    if event.duration is not None:
        fields["duration"] = round(event.duration, 3)
    if event.error:
        fields["error_title"] = event.error.get("title")
        fields["error_detail"] = event.error.get("detail")
        fields["error_status"] = event.error.get("status")
        fields["trace_id"] = event.error.get("traceId")
    if event.reason:
        fields["reason"] = event.reason
    level = "warning" if event.state in SETTLED_BAD else "info"
    getattr(log, level)("transition", **fields)


def log_progress(daemon: Daemon, engine: Engine, *, every: float) -> None:
    """A "still pending" line for every operation of a loaded manifest that has run
    ``every`` seconds, then one every ``every`` seconds: elapsed, the deadline, the
    command's typical duration."""
    if daemon.plan is None or daemon.load is None or daemon.store is None:
        return
    pending = {v.spec_hash: v.name for v in daemon.plan.views
               if v.state == IntentState.PENDING and v.spec_hash}
    logged = daemon._progress_logged
    for gone in set(logged) - set(pending):
        del logged[gone]
    if not pending:
        return
    now, mono = daemon.clock(), time.monotonic()
    records = daemon.store.intents()
    for spec_hash, name in pending.items():
        rec, command = records.get(spec_hash), daemon.load.by_name.get(name)
        if rec is None or command is None:
            continue
        found = progress(rec, now, timeout=command.timeout,
                         typical=engine.timers.durations.typical(rec.service,
                                                                rec.command))
        last = logged.get(spec_hash)
        if found is None or found.elapsed is None:
            continue
        if found.elapsed < every if last is None else mono - last < every:
            continue
        logged[spec_hash] = mono
        log.info("still_pending", name=name, service=rec.service, command=rec.command,
                 operation_id=rec.operation_id, attempt=found.attempt,
                 elapsed=round(found.elapsed),
                 deadline_in=(round(found.deadline_in) if found.deadline_in is not None
                              else None),
                 typical=round(found.typical, 1) if found.typical is not None else None,
                 message=found.still_pending())
