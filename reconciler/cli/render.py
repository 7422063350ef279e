"""Human-readable renderings: the plan (terraform style), status and history tables.

Pure functions from records to text, shared by the CLI and the demo. The status rows
themselves are built by :func:`reconciler.observe.status.status_rows` (as for ``/status``);
here they are only rendered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reconciler.model.lifecycle import IntentState
from reconciler.model.records import IntentRecord, OperationRecord
from reconciler.observe.status import StatusRow
from reconciler.planning.planner import Action, Plan

__all__ = [
    "history_rows",
    "plan_document",
    "plan_text",
    "status_json",
    "status_table",
    "table",
]

#: plan summary: how many manifests stand in these states, when any does
SUMMARY_STATES = (IntentState.SUSPENDED, IntentState.STALLED, IntentState.FAILED)

SYMBOLS = {
    "submit": "+", "retry": "~", "resolve": "?", "adopt": "<", "timeout": "!",
    "give-up": "!", "orphan": "-", "poll": ".",
}


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table (no borders), the way kubectl prints."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _short(op_id: str | None) -> str:
    return op_id or "-"


def _error(error: Mapping[str, Any] | None, width: int = 60) -> str:
    if not error:
        return ""
    text = str(error.get("title") or "")
    detail = error.get("detail")
    if detail:
        text = f"{text}: {detail}" if text else str(detail)
    return text if len(text) <= width else text[: width - 3] + "..."


def plan_text(plan: Plan, *, revision: str, invalid: int,
              adopt: Mapping[str, str] | None = None) -> str:
    """The plan as a terraform-style listing with a one-line summary."""
    adopt = adopt or {}
    lines = [f"Plan for revision {revision}: {len(plan.desired)} manifest(s)"
             + (f", {invalid} invalid (skipped)" if invalid else "") + "."]
    changes = [a for a in plan.actions if a.changes]
    waiting = [a for a in plan.actions if a.kind.startswith("wait")]
    polls = [a for a in plan.actions if a.kind == "poll"]
    if changes or polls:
        lines.append("")
        for action in [*changes, *polls]:
            kind = "adopt" if action.spec_hash in adopt else action.kind
            reason = (f"operation {action.operation_id} exists ({adopt[action.spec_hash]}); "
                      "record it, run nothing") if kind == "adopt" else action.reason
            op = f" [{action.operation_id}]" if action.operation_id and kind != "adopt" else ""
            lines.append(f"  {SYMBOLS.get(kind, ' ')} {kind:<8} {action.name}{op}")
            lines.append(f"      {reason}")
    if waiting:
        lines.append("")
        for action in waiting:
            at = f" (at {_when(action.at)})" if action.at else ""
            lines.append(f"  . {action.kind:<16} {action.name}: {action.reason}{at}")
    counts = Counter(("adopt" if a.spec_hash in adopt else a.kind) for a in changes)
    states = Counter(v.state for v in plan.views)
    standing = (f"{states[IntentState.IN_SYNC]} in sync, {len(polls)} in flight, "
                f"{len(waiting)} waiting")
    for state in SUMMARY_STATES:
        if states[state]:
            standing += f", {states[state]} {state}"
    lines.append("")
    if not changes:
        lines.append(f"No changes. {standing}.")
    else:
        parts = ", ".join(f"{n} to {k}" for k, n in sorted(counts.items()))
        lines.append(f"Plan: {parts}; {standing}.")
    return "\n".join(lines)


def plan_document(plan: Plan, *, revision: str, problems: Sequence[str],
                  adopt: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The plan for machines (``reconciler plan --output json``)."""
    adopt = adopt or {}

    def item(a: Action) -> dict[str, Any]:
        d = a.as_dict()
        if a.spec_hash in adopt:
            d["action"], d["found"] = "adopt", adopt[a.spec_hash]
        d["changes"] = a.changes
        return d

    return {
        "revision": revision,
        "changes": sum(1 for a in plan.actions if a.changes),
        "actions": [item(a) for a in plan.actions],
        "manifests": [{"name": v.name, "state": v.state, "reason": v.reason}
                      for v in plan.views],
        "problems": list(problems),
    }


def status_json(rows: Sequence[StatusRow]) -> list[dict[str, Any]]:
    """``reconciler status --output json``: one object per row."""
    return [{
        "name": r.name,
        "service": r.service or "",
        "command": r.command or "",
        "state": r.state,
        "reason": r.reason,
        "attempts": r.attempts,
        "operationId": r.operation_id,
        "window": r.window or "",
        "lastChange": r.updated_at.isoformat() if r.updated_at else None,
        "error": dict(r.error) if r.error else None,
    } for r in rows]


def status_table(rows: Sequence[StatusRow]) -> str:
    """``reconciler status`` (and the demo): the rows as a table."""
    return table(
        ("NAME", "SERVICE", "COMMAND", "STATE", "ATTEMPTS", "LAST OPERATION", "LAST CHANGE",
         "ERROR"),
        [(r.name, r.service or "", r.command or "", r.state, str(r.attempts),
          _short(r.operation_id), _when(r.updated_at),
          _error(r.error) or (r.reason if r.state != IntentState.IN_SYNC else ""))
         for r in rows],
    )


def history_rows(intents: Sequence[IntentRecord],
                 operations: Sequence[OperationRecord]) -> str:
    """Every operation of one manifest, oldest first, with its intent's window."""
    by_hash = {i.spec_hash: i for i in intents}
    rows = []
    for op in operations:
        intent = by_hash.get(op.spec_hash)
        rows.append((
            op.spec_hash[:12], intent.window if intent and intent.window else "-",
            str(op.attempt + 1), op.operation_id, _when(op.submitted_at),
            _when(op.finished_at), op.status, _error(op.error, 50),
        ))
    return table(("SPEC", "WINDOW", "ATTEMPT", "OPERATION", "SUBMITTED", "FINISHED", "STATUS",
                  "ERROR"), rows)
