"""Human-readable renderings: the plan (terraform style), status and history tables.

Pure functions from records to text, shared by the CLI and the demo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from reconciler.model.records import IntentRecord, OperationRecord
from reconciler.planning.planner import Action, Plan, View

__all__ = [
    "history_rows",
    "plan_document",
    "plan_text",
    "status_rows",
    "status_table",
    "table",
]

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
    standing = f"{states['in_sync']} in sync, {len(polls)} in flight, {len(waiting)} waiting"
    for state in ("suspended", "stalled", "failed"):
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


def status_rows(latest: Mapping[str, IntentRecord],
                views: Mapping[str, View] | None = None) -> list[dict[str, Any]]:
    """One row per manifest: the recorded state, or the planner's view when known."""
    views = views or {}
    rows = []
    for name in sorted(set(latest) | set(views)):
        rec, view = latest.get(name), views.get(name)
        current = rec if rec is not None and (view is None or view.spec_hash == rec.spec_hash) \
            else None
        state: str
        if view is not None:
            state = view.state
        elif rec is not None:
            state = rec.retired or rec.status
        else:
            state = "unknown"
        rows.append({
            "name": name,
            "service": rec.service if rec else "",
            "command": rec.command if rec else "",
            "state": state,
            "reason": view.reason if view else "",
            "attempts": current.attempts if current else 0,
            "operationId": current.operation_id if current else None,
            "window": current.window if current else "",
            "lastChange": current.updated_at.isoformat() if current else None,
            "error": dict(current.last_error) if current and current.last_error else None,
            "_updated": current.updated_at if current else None,
        })
    return rows


def status_table(rows: Sequence[Mapping[str, Any]]) -> str:
    return table(
        ("NAME", "SERVICE", "COMMAND", "STATE", "ATTEMPTS", "LAST OPERATION", "LAST CHANGE",
         "ERROR"),
        [(r["name"], r["service"], r["command"], r["state"], str(r["attempts"]),
          _short(r["operationId"]), _when(r["_updated"]),
          _error(r["error"]) or (r["reason"] if r["state"] not in ("in_sync",) else ""))
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
