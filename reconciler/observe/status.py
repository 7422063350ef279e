"""How every manifest stands: ONE builder of the per-manifest status rows.

:func:`status_rows` is what the daemon's ``/status``, ``reconciler status`` (table and
``-o json``) and the demo's table are made of; each only renders the rows its own way
(:func:`status_document` here for ``/status``; the CLI's in :mod:`reconciler.cli.render`).
Pure: records and views in, rows out.

A row's state is the planner's view when the plan knows the manifest. Without a view it
comes from the record: a retired record whose manifest the plan does not know is
``orphaned``; a record not retired (none of the plan's business yet: no plan was made, or
the record is newer than the plan) shows the state it was recorded in.

:func:`progress` tells how far an operation in flight is (how long its attempt has run, its
deadline, the typical duration of its command): for ``reconciler status``, the daemon's
"still pending" log lines and the demo. Attempt numbers shown to people are 1-based
("attempt 1" is the first), everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.model.durations import format_duration
from reconciler.model.lifecycle import IntentState
from reconciler.model.records import IntentRecord
from reconciler.planning.planner import View
from reconciler.source.git import scrub
from reconciler.source.kinds import SourceStatus
from reconciler.version import __version__

__all__ = ["Progress", "StatusRow", "approx", "progress", "source_item", "status_document",
           "status_item", "status_rows"]

#: (service, command) -> typical seconds to success, or None (no history)
Typical = Callable[[str, str], float | None]


def approx(seconds: float) -> str:
    """A duration for people: whole seconds below 10 minutes (``3m20s``), whole minutes
    above (``12m``, ``1h5m``)."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds >= 600:
        seconds = round(seconds / 60) * 60
    return sign + format_duration(float(round(seconds)))


@dataclass(frozen=True)
class Progress:
    """How far the operation of an intent in flight is."""

    #: the attempt running, 1-based
    attempt: int
    #: when this attempt was sent (None: not sent yet)
    started_at: datetime | None
    #: seconds this attempt has run (None: not sent yet)
    elapsed: float | None
    #: first submission plus the manifest's timeout (None: not known without the manifest)
    deadline: datetime | None
    #: seconds until the deadline (negative: past it)
    deadline_in: float | None
    #: the typical duration of this service's command, from its recent successes
    typical: float | None

    def text(self) -> str:
        """``running 12m, attempt 1, deadline in 48m, typically 10m`` (status tables)."""
        parts = [f"running {approx(self.elapsed)}" if self.elapsed is not None
                 else "not sent yet", f"attempt {self.attempt}"]
        parts.append(_deadline_text(self.deadline_in))
        if self.typical is not None:
            parts.append(f"typically {approx(self.typical)}")
        return ", ".join(p for p in parts if p)

    def still_pending(self) -> str:
        """``still pending, 12m elapsed, deadline in 48m`` (the daemon's progress lines)."""
        parts = ["still pending"]
        if self.elapsed is not None:
            parts.append(f"{approx(self.elapsed)} elapsed")
        parts.append(_deadline_text(self.deadline_in))
        if self.typical is not None:
            parts.append(f"typically {approx(self.typical)}")
        return ", ".join(p for p in parts if p)

    def as_dict(self) -> dict[str, Any]:
        """For ``status -o json``: seconds as numbers, moments as ISO 8601."""
        return {
            "attempt": self.attempt,
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "elapsedSeconds": round(self.elapsed, 3) if self.elapsed is not None else None,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "deadlineInSeconds": (round(self.deadline_in, 3) if self.deadline_in is not None
                                  else None),
            "typicalSeconds": round(self.typical, 3) if self.typical is not None else None,
        }


def _deadline_text(left: float | None) -> str:
    if left is None:
        return ""
    if left < 0:
        return f"deadline passed {approx(-left)} ago"
    return f"deadline in {approx(left)}"


def progress(rec: IntentRecord, now: datetime, *, timeout: timedelta | None = None,
             typical: float | None = None) -> Progress | None:
    """How far ``rec``'s operation is at ``now`` (None unless it is in flight).
    ``timeout``: the manifest's (None: the deadline is not known); ``typical``: the
    command's typical duration (:class:`reconciler.execution.timing.Durations`)."""
    if not rec.in_flight:
        return None
    started = rec.attempt_started_at
    elapsed = max(0.0, (now - started).total_seconds()) if started is not None else None
    deadline = (rec.first_submitted_at + timeout
                if timeout is not None and rec.first_submitted_at is not None else None)
    left = (deadline - now).total_seconds() if deadline is not None else None
    return Progress(max(1, rec.attempts), started, elapsed, deadline, left, typical)


@dataclass(frozen=True)
class StatusRow:
    """One manifest (or a recorded name whose manifest is gone) and its current intent.

    The intent's fields (``attempts`` to ``updated_at``) are those of the latest record
    when it is the intent the plan is about (or no plan is known), else empty: a manifest
    whose spec changed and is not recorded yet shows no operation of its previous spec.
    """

    name: str
    #: an :class:`IntentState` (without a plan: the recorded state, or how it was retired)
    state: str
    reason: str = ""
    #: of the latest record; None when the manifest was never recorded
    service: str | None = None
    command: str | None = None
    spec_hash: str | None = None
    attempts: int = 0
    operation_id: str | None = None
    #: the schedule window of the current intent ("" for ``once``); None without one
    window: str | None = None
    error: Mapping[str, Any] | None = None
    revision: str | None = None
    updated_at: datetime | None = None
    #: how far the current intent's operation is, while it is in flight (only when
    #: :func:`status_rows` is given ``now``)
    progress: Progress | None = None


def status_rows(latest: Mapping[str, IntentRecord],
                views: Iterable[View] | None = None, *, now: datetime | None = None,
                timeouts: Mapping[str, timedelta] | None = None,
                typical: Typical | None = None) -> list[StatusRow]:
    """One row per name of ``latest`` (the store's latest record of every name) or of
    ``views`` (the plan's), sorted by name. ``views`` None: no plan is known.

    With ``now``, a row whose current intent is in flight carries its :func:`progress`:
    ``timeouts`` are the loaded manifests' (by name; without one the deadline is not
    known) and ``typical`` gives a command's typical duration."""
    planned = None if views is None else {v.name: v for v in views}
    names = sorted(set(latest) | set(planned or ()))
    rows = [_row(name, latest.get(name), planned) for name in names]
    if now is None:
        return rows
    return [_with_progress(row, latest.get(row.name), now, timeouts or {}, typical)
            for row in rows]


def _with_progress(row: StatusRow, rec: IntentRecord | None, now: datetime,
                   timeouts: Mapping[str, timedelta], typical: Typical | None) -> StatusRow:
    if rec is None or row.spec_hash != rec.spec_hash or row.state not in (
            IntentState.PENDING, IntentState.SUBMITTING):
        return row
    found = progress(rec, now, timeout=timeouts.get(row.name),
                     typical=typical(rec.service, rec.command) if typical else None)
    return row if found is None else replace(row, progress=found)


def _row(name: str, rec: IntentRecord | None, planned: Mapping[str, View] | None) -> StatusRow:
    view = planned.get(name) if planned is not None else None
    current = rec if rec is not None and (view is None or view.spec_hash == rec.spec_hash) \
        else None
    return StatusRow(
        name=name,
        state=_state(rec, view, planned=planned is not None),
        reason=view.reason if view else "",
        service=rec.service if rec else None,
        command=rec.command if rec else None,
        spec_hash=view.spec_hash if view else (rec.spec_hash if rec else None),
        attempts=current.attempts if current else 0,
        operation_id=current.operation_id if current else None,
        window=current.window if current else None,
        error=dict(current.last_error) if current and current.last_error else None,
        revision=current.revision if current else None,
        updated_at=current.updated_at if current else None,
    )


def _state(rec: IntentRecord | None, view: View | None, *, planned: bool) -> str:
    if view is not None:
        return view.state
    assert rec is not None  # a name comes from a view or a record
    if rec.retired is None:
        return rec.status
    return IntentState.ORPHANED if planned else rec.retired


def status_item(row: StatusRow) -> dict[str, Any]:
    """One entry of ``/status``'s ``intents``."""
    return {
        "name": row.name,
        "state": row.state,
        "reason": row.reason,
        "service": row.service,
        "command": row.command,
        "specHash": row.spec_hash,
        "attempts": row.attempts,
        "operationId": row.operation_id,
        "window": row.window,
        "error": dict(row.error) if row.error else None,
        "revision": row.revision,
        "updatedAt": row.updated_at.isoformat() if row.updated_at else None,
    }


def source_item(status: SourceStatus, secrets: Sequence[str] = ()) -> dict[str, Any]:
    """``/status``'s ``source``: kind, location, revision, last success, errors and the
    last error (scrubbed of ``secrets``, tokens and URL user info once more)."""
    last = status.last_success
    return {
        "kind": status.kind,
        "location": scrub(status.location, secrets),
        "revision": status.revision,
        "lastSuccess": (datetime.fromtimestamp(last, UTC).isoformat()
                        if last is not None else None),
        "errors": status.errors,
        "lastError": scrub(status.last_error, secrets) if status.last_error else None,
    }


def status_document(rows: Sequence[StatusRow], *, revision: str | None,
                    problems: Iterable[object] = (),
                    source: Mapping[str, Any] | None = None,
                    withheld: str | None = None) -> dict[str, Any]:
    """The ``/status`` document: the version, the manifest revision, the invalid
    manifests (one line each), the source (:func:`source_item`) with why orphaning is
    withheld (None: it is not), and every row."""
    document: dict[str, Any] = {
        "version": __version__,
        "revision": revision,
        "invalidManifests": [str(p) for p in problems],
    }
    if source is not None or withheld:
        if source is not None:
            document["source"] = dict(source)
        document["orphaningWithheld"] = withheld or None
    document["intents"] = [status_item(r) for r in rows]
    return document
