"""Human-readable renderings: the plan (terraform style), status and history tables.

Pure functions from records to text, shared by the CLI and the demo. The status rows
themselves are built by :func:`reconciler.observe.status.status_rows` (as for ``/status``);
here they are only rendered.

Two vocabularies, never mixed: a manifest's **state** (``in_sync``, ``pending``,
``failed``, ``stalled``, ... :class:`~reconciler.model.states.IntentState`) in every
``STATE`` column and ``state`` field, and one operation's **outcome** (``succeeded``,
``failed``, ``timed_out``, ``lost``, as the API and ``operations_total{outcome}`` say) in
``history``. Attempt numbers are 1-based everywhere ("attempt 1" is the first); JSON adds
the 0-based ``attemptIndex`` the operation id is derived from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.model.records import IntentRecord, OperationRecord
from reconciler.model.states import IntentState
from reconciler.observe.status import Progress, StatusRow
from reconciler.planning.planner import Action, Plan, View

__all__ = [
    "SpecChange",
    "history_json",
    "history_rows",
    "plan_document",
    "plan_text",
    "short_revision",
    "spec_changes",
    "standing",
    "status_json",
    "status_rows_json",
    "status_table",
    "table",
]

SYMBOLS = {
    "submit": "+", "retry": "~", "resolve": "?", "adopt": "<", "timeout": "!",
    "give-up": "!", "orphan": "-", "poll": ".",
}

#: how the plan groups the manifests that need no change now, in this order (a key of
#: :func:`standing`, its symbol, and the word the summary uses)
STANDING = (
    (IntentState.IN_SYNC.value, " ", "in sync"),
    ("in_flight", ".", "in flight"),
    *((s.value, symbol, s.value) for s, symbol in (
        (IntentState.WAITING, "."),
        (IntentState.FAILED, "!"),
        (IntentState.STALLED, "!"),
        (IntentState.LOST, "!"),
        (IntentState.SUSPENDED, "."),
        (IntentState.INVALID, "="),
        (IntentState.ORPHANED, "-"),
    )),
)
#: at most this many names in one summary group ("a, b, c, +2 more")
SUMMARY_NAMES = 5


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


def short_revision(revision: str | None) -> str:
    """A revision for a table: a git commit's first 12 hex digits, a content hash as it is
    (``sha256:`` and 16 digits), ``-`` for none."""
    if not revision:
        return "-"
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision[:12]
    return revision


def _error(error: Mapping[str, Any] | None, width: int = 60) -> str:
    if not error:
        return ""
    text = str(error.get("title") or "")
    detail = error.get("detail")
    if detail:
        text = f"{text}: {detail}" if text else str(detail)
    return text if len(text) <= width else text[: width - 3] + "..."


# ---------------------------------------------------------------------------- spec changes


@dataclass(frozen=True)
class SpecChange:
    """One field of a manifest's intent that differs from the last recorded run:
    ``~`` changed, ``+`` added, ``-`` removed (terraform's symbols)."""

    path: str
    op: str
    old: Any = None
    new: Any = None

    def text(self) -> str:
        if self.op == "+":
            return f"+ {self.path}: {_value(self.new)}"
        if self.op == "-":
            return f"- {self.path}: {_value(self.old)}"
        return f"~ {self.path}: {_value(self.old)} → {_value(self.new)}"

    def as_dict(self) -> dict[str, Any]:
        kind = {"+": "added", "-": "removed"}.get(self.op, "changed")
        return {"path": self.path, "change": kind, "old": self.old, "new": self.new}


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _same(old: Any, new: Any) -> bool:
    """Equal as JSON values: ``1``, ``1.0`` and ``true`` differ (the hash tells them apart)."""
    return type(old) is type(new) and old == new


def _diff(old: Any, new: Any, path: str, out: list[SpecChange]) -> None:
    """Leaf by leaf where both sides are mappings (or lists), else one change of the
    whole value at ``path``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            at = f"{path}.{key}" if path else str(key)
            if key not in new:
                out.append(SpecChange(at, "-", old=old[key]))
            elif key not in old:
                out.append(SpecChange(at, "+", new=new[key]))
            else:
                _diff(old[key], new[key], at, out)
    elif isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            at = f"{path}[{index}]"
            if index >= len(new):
                out.append(SpecChange(at, "-", old=old[index]))
            elif index >= len(old):
                out.append(SpecChange(at, "+", new=new[index]))
            else:
                _diff(old[index], new[index], at, out)
    elif not _same(old, new):
        out.append(SpecChange(path, "~", old, new))


def spec_changes(old: str, new: str) -> list[SpecChange]:
    """What differs between two canonical intents (``IntentRecord.canonical``, the
    ``Desired.canonical``), in key order: ``payload.schemaVersion: 7 → 8``. Empty when
    either is not a JSON object."""
    try:
        before, after = json.loads(old), json.loads(new)
    except ValueError:
        return []
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    changes: list[SpecChange] = []
    _diff(before, after, "", changes)
    return changes


def _changes_of(plan: Plan, previous: Mapping[str, str]) -> dict[str, list[SpecChange]]:
    """The spec changes of every planned submission whose manifest ran before with
    another spec (``previous``: name -> the canonical intent last recorded)."""
    found: dict[str, list[SpecChange]] = {}
    for action in plan.actions:
        want = plan.desired.get(action.name)
        old = previous.get(action.name)
        if action.kind == "submit" and want is not None and old is not None:
            found[action.name] = spec_changes(old, want.canonical)
    return found


# ---------------------------------------------------------------------------- the plan


def standing(plan: Plan) -> dict[str, list[str]]:
    """Where every manifest stands apart from the planned changes, by group of
    :data:`STANDING` (names sorted): ``in_flight`` is every manifest whose operation runs
    (pending, or submitted with an outcome still to learn) and is not about to be sent."""
    sending = {a.name for a in plan.actions if a.kind in ("submit", "retry")}
    groups: dict[str, list[str]] = {key: [] for key, _, _ in STANDING}
    for view in plan.views:
        key = str(view.state)
        if view.state in (IntentState.PENDING, IntentState.SUBMITTING):
            if view.name in sending:
                continue
            key = "in_flight"
        if key in groups:
            groups[key].append(view.name)
    return {key: sorted(names) for key, names in groups.items()}


def _names(names: Sequence[str]) -> str:
    shown = list(names[:SUMMARY_NAMES])
    if len(names) > SUMMARY_NAMES:
        shown.append(f"+{len(names) - SUMMARY_NAMES} more")
    return ", ".join(shown)


def _standing_line(view: View, rec: IntentRecord | None, wait: Action | None,
                   progress: Progress | None) -> str:
    """One manifest that needs no change now: its state, name and why (in flight: its
    operation and how far it is; waiting: what for, and until when)."""
    if view.state in (IntentState.PENDING, IntentState.SUBMITTING):
        op = f" [{rec.operation_id}]" if rec is not None and rec.operation_id else ""
        what = progress.text() if progress is not None else (
            f"attempt {rec.attempts}" if rec is not None and rec.attempts else "")
        return f"{view.state:<8} {view.name}{op}" + (f": {what}" if what else "")
    when = f" (at {_when(wait.at)})" if wait is not None and wait.at else ""
    why = f"{wait.reason if wait is not None else view.reason}{when}".strip()
    return f"{view.state:<8} {view.name}" + (f": {why}" if why else "")


def plan_text(plan: Plan, *, revision: str, invalid: int,
              adopt: Mapping[str, str] | None = None,
              previous: Mapping[str, str] | None = None,
              recorded: Mapping[str, IntentRecord] | None = None,
              progress: Mapping[str, Progress] | None = None) -> str:
    """The plan as a terraform-style listing with a one-line summary.

    ``adopt``: spec hash -> outcome of operations found on the server; ``previous``:
    name -> the canonical intent last recorded (a submission then lists the fields that
    changed, old and new); ``recorded``: the store's intents by spec hash (operation and
    attempt of what is in flight); ``progress``: name -> how far its operation is."""
    adopt, recorded, progress = adopt or {}, recorded or {}, progress or {}
    diffs = _changes_of(plan, previous or {})
    lines = [f"Plan for revision {revision}: {len(plan.desired)} manifest(s)"
             + (f", {invalid} invalid (skipped)" if invalid else "") + "."]
    changes = [a for a in plan.actions if a.changes]
    if changes:
        lines.append("")
        for action in changes:
            kind = "adopt" if action.spec_hash in adopt else action.kind
            reason = (f"operation {action.operation_id} exists ({adopt[action.spec_hash]}); "
                      "record it, run nothing") if kind == "adopt" else action.reason
            if kind == "submit" and diffs.get(action.name):
                reason += "; the spec changed since its last run:"
            op = f" [{action.operation_id}]" if action.operation_id and kind != "adopt" else ""
            lines.append(f"  {SYMBOLS.get(kind, ' ')} {kind:<8} {action.name}{op}")
            lines.append(f"      {reason}")
            lines.extend(f"        {change.text()}" for change in diffs.get(action.name, ()))
    groups = standing(plan)
    by_name = {v.name: v for v in plan.views}
    waits = {a.name: a for a in plan.actions if a.kind.startswith("wait")}
    shown = [(key, symbol) for key, symbol, _ in STANDING
             if key != IntentState.IN_SYNC and groups[key]]
    if shown:
        lines.append("")
        for key, symbol in shown:
            for name in groups[key]:
                view = by_name[name]
                rec = recorded.get(view.spec_hash or "")
                # held: its state is kept, nothing is sent or orphaned
                if key == IntentState.INVALID:
                    lines.append(f"  = {IntentState.INVALID:<8} {name}")
                    lines.append(f"      {view.reason}")
                    continue
                lines.append(f"  {symbol} "
                             + _standing_line(view, rec, waits.get(name), progress.get(name)))
    counts: dict[str, int] = {}
    for action in changes:
        kind = "adopt" if action.spec_hash in adopt else action.kind
        counts[kind] = counts.get(kind, 0) + 1
    summary = f"{len(groups[IntentState.IN_SYNC])} in sync"
    for key, _, word in STANDING[1:]:
        names = groups[key]
        if names or key in ("in_flight", IntentState.WAITING):
            summary += f", {len(names)} {word}" + (f" ({_names(names)})" if names else "")
    lines.append("")
    if not changes:
        lines.append(f"No changes. {summary}.")
    else:
        parts = ", ".join(f"{n} to {k}" for k, n in sorted(counts.items()))
        lines.append(f"Plan: {parts}; {summary}.")
    return "\n".join(lines)


def _action_dict(a: Action) -> dict[str, Any]:
    """An action for ``plan -o json``: ``attempt`` 1-based as everywhere, with the 0-based
    ``attemptIndex`` the operation id is made of."""
    d = a.as_dict()
    d["attempt"] = a.attempt + 1 if a.attempt is not None else None
    d["attemptIndex"] = a.attempt
    return d


def plan_document(plan: Plan, *, revision: str, problems: Sequence[str],
                  adopt: Mapping[str, str] | None = None,
                  withheld: str | None = None,
                  previous: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The plan for machines (``reconciler plan --output json``): what :func:`plan_text`
    says. ``withheld``: why nothing absent from the source is orphaned (None: it is not
    withheld); ``previous`` as for :func:`plan_text` (each submission's ``specChanges``)."""
    adopt = adopt or {}
    diffs = _changes_of(plan, previous or {})

    def item(a: Action) -> dict[str, Any]:
        d = _action_dict(a)
        if a.spec_hash in adopt:
            d["action"], d["found"] = "adopt", adopt[a.spec_hash]
        d["changes"] = a.changes
        if a.kind == "submit" and a.name in diffs:
            d["specChanges"] = [c.as_dict() for c in diffs[a.name]]
        return d

    return {
        "revision": revision,
        "changes": sum(1 for a in plan.actions if a.changes),
        "actions": [item(a) for a in plan.actions],
        "manifests": [{"name": v.name, "state": v.state, "reason": v.reason}
                      for v in plan.views],
        "standing": standing(plan),
        "problems": list(problems),
        "orphaningWithheld": withheld,
    }


# ---------------------------------------------------------------------------- status


def status_json(rows: Sequence[StatusRow]) -> list[dict[str, Any]]:
    """The core fields of one ``reconciler status --output json`` object per row (their
    names and order never change; :func:`status_rows_json` appends the newer ones)."""
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


def status_rows_json(rows: Sequence[StatusRow]) -> list[dict[str, Any]]:
    """``reconciler status --output json``: :func:`status_json` plus the manifest
    ``revision`` the current intent was recorded at and, while its operation runs, its
    ``progress`` (:meth:`Progress.as_dict`; null otherwise)."""
    return [{**core, "revision": r.revision,
             "progress": r.progress.as_dict() if r.progress is not None else None}
            for core, r in zip(status_json(rows), rows, strict=True)]


def _detail(r: StatusRow) -> str:
    if r.state == IntentState.INVALID:
        return r.reason
    if r.progress is not None:
        return r.progress.text()
    return _error(r.error) or (r.reason if r.state != IntentState.IN_SYNC else "")


def status_table(rows: Sequence[StatusRow]) -> str:
    """``reconciler status`` (and the demo): the rows as a table; DETAIL says why a
    manifest is not in sync, or how far its operation is."""
    return table(
        ("NAME", "SERVICE", "COMMAND", "STATE", "ATTEMPTS", "LAST OPERATION", "LAST CHANGE",
         "REVISION", "DETAIL"),
        [(r.name, r.service or "", r.command or "", r.state, str(r.attempts),
          _short(r.operation_id), _when(r.updated_at),
          short_revision(r.revision) if r.revision else "", _detail(r))
         for r in rows],
    )


# ---------------------------------------------------------------------------- history


def history_rows(intents: Sequence[IntentRecord],
                 operations: Sequence[OperationRecord]) -> str:
    """Every operation of one manifest, oldest first, with its intent's window, the
    attempt (1-based), its outcome and the revision it was sent from."""
    by_hash = {i.spec_hash: i for i in intents}
    rows = []
    for op in operations:
        intent = by_hash.get(op.spec_hash)
        rows.append((
            op.spec_hash[:12], intent.window if intent and intent.window else "-",
            str(op.attempt + 1), op.operation_id, _when(op.submitted_at),
            _when(op.finished_at), op.status, short_revision(op.revision),
            _error(op.error, 50),
        ))
    return table(("SPEC", "WINDOW", "ATTEMPT", "OPERATION", "SUBMITTED", "FINISHED", "OUTCOME",
                  "REVISION", "ERROR"), rows)


def history_json(operations: Sequence[OperationRecord]) -> list[dict[str, Any]]:
    """``reconciler history --output json``: one object per operation; ``attempt``
    1-based (``attemptIndex`` 0-based), ``outcome`` the operation's (``status`` is the
    same value, kept for scripts written against it)."""
    return [{
        "operationId": o.operation_id, "specHash": o.spec_hash,
        "attempt": o.attempt + 1, "attemptIndex": o.attempt,
        "serviceId": o.service_id, "submittedAt": o.submitted_at.isoformat(),
        "finishedAt": o.finished_at.isoformat() if o.finished_at else None,
        "outcome": o.status, "status": o.status, "error": o.error, "result": o.result,
        "revision": o.revision,
    } for o in operations]
