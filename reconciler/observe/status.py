"""How every manifest stands: ONE builder of the per-manifest status rows.

:func:`status_rows` is what the daemon's ``/status``, ``reconciler status`` (table and
``-o json``) and the demo's table are made of; each only renders the rows its own way
(:func:`status_document` here for ``/status``; the CLI's in :mod:`reconciler.cli.render`).
Pure: records and views in, rows out.

A row's state is the planner's view when the plan knows the manifest. Without a view it
comes from the record: a retired record whose manifest the plan does not know is
``orphaned``; a record not retired (none of the plan's business yet: no plan was made, or
the record is newer than the plan) shows the state it was recorded in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler import __version__
from reconciler.model.lifecycle import IntentState
from reconciler.model.records import IntentRecord
from reconciler.planning.planner import View

__all__ = ["StatusRow", "status_document", "status_item", "status_rows"]


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


def status_rows(latest: Mapping[str, IntentRecord],
                views: Iterable[View] | None = None) -> list[StatusRow]:
    """One row per name of ``latest`` (the store's latest record of every name) or of
    ``views`` (the plan's), sorted by name. ``views`` None: no plan is known."""
    planned = None if views is None else {v.name: v for v in views}
    names = sorted(set(latest) | set(planned or ()))
    return [_row(name, latest.get(name), planned) for name in names]


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


def status_document(rows: Sequence[StatusRow], *, revision: str | None,
                    problems: Iterable[object] = ()) -> dict[str, Any]:
    """The ``/status`` document: the version, the manifest revision, the invalid
    manifests (one line each) and every row."""
    return {
        "version": __version__,
        "revision": revision,
        "invalidManifests": [str(p) for p in problems],
        "intents": [status_item(r) for r in rows],
    }
