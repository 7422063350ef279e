"""One manifest's page as values: its spec as loaded, the history of every attempt, what
it waits for, and the command that would retry it. Pure; every text scrubbed.

:func:`manifest_page` turns :class:`~reconciler.observe.web.data.ManifestFacts` into a
:class:`ManifestPage`; its row is the overview's (:func:`~reconciler.observe.web.pages.
row_view`, from the same status row as ``/status``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from reconciler.model import scrub
from reconciler.model.durations import format_duration
from reconciler.model.manifest import Schedule, ServiceCommand
from reconciler.model.records import IntentRecord, OperationRecord
from reconciler.model.states import IntentState
from reconciler.observe.status import approx
from reconciler.observe.web.data import ManifestFacts
from reconciler.observe.web.graph import Layout, chain_of
from reconciler.observe.web.pages import (
    RowView,
    leadership_text,
    moment,
    policy_text,
    row_view,
    scrubbed,
    short_revision,
)

__all__ = ["Attempt", "ManifestPage", "Retry", "SpecField", "Wait", "manifest_page"]

#: states ``reconciler retry`` gives a fresh budget to
RETRYABLE = frozenset({IntentState.FAILED, IntentState.STALLED, IntentState.LOST})
_DASH = "—"


@dataclass(frozen=True)
class SpecField:
    label: str
    value: str
    #: a block of JSON (payload, context) rather than one line
    block: bool = False


@dataclass(frozen=True)
class Attempt:
    """One row of the history: one attempt of one intent."""

    attempt: int
    operation_id: str
    spec: str
    window: str
    submitted: str
    finished: str
    took: str
    outcome: str
    error: str
    error_detail: str
    revision: str
    revision_full: str
    #: the attempt belongs to the intent the manifest asks for now
    current: bool


@dataclass(frozen=True)
class Wait:
    """One thing the manifest waits for (or does not)."""

    kind: str
    text: str
    #: a manifest it depends on (linked), else None
    target: str | None = None
    met: bool = False


@dataclass(frozen=True)
class Retry:
    #: whether ``reconciler retry`` would do something now
    applies: bool
    command: str
    why: str


@dataclass(frozen=True)
class ManifestPage:
    name: str
    title: str
    generated_at: str
    row: RowView
    source_location: str
    spec: tuple[SpecField, ...]
    invalid: str
    history: tuple[Attempt, ...]
    waits: tuple[Wait, ...]
    retry: Retry
    chain: Layout | None
    leadership: str
    leadership_kind: str
    revision: str

    def live(self) -> dict[str, Any]:
        """``/ui/manifests/NAME.json``: what the script updates (no request moment)."""
        return {"row": self.row.as_dict(), "history": [asdict(a) for a in self.history],
                "waits": [asdict(w) for w in self.waits], "retry": asdict(self.retry),
                "invalid": self.invalid}


def _json_block(value: Mapping[str, Any] | None) -> str:
    if value is None:
        return "(none)"
    return json.dumps(scrub.value(dict(value)), indent=2, sort_keys=True, ensure_ascii=False)


def _spec(command: ServiceCommand) -> tuple[SpecField, ...]:
    """The manifest's spec as loaded, field by field (scrubbed)."""
    c = command
    service = (f"service: {c.service.id}" if c.service.id is not None
               else f"serviceName: {c.service.name}")
    retry = (f"limit {c.retry.limit}, backoff {format_duration(c.retry.backoff)}, "
             f"maxBackoff {format_duration(c.retry.max_backoff)}")
    fields = [
        SpecField("service", service), SpecField("command", c.command),
        SpecField("policy", policy_text(c)), SpecField("timeout", format_duration(c.timeout)),
        SpecField("retry", retry),
        SpecField("dependsOn", ", ".join(c.depends_on) or "(none)"),
        SpecField("suspend", "true" if c.suspend else "false"),
        SpecField("rerun", c.rerun or "(not set)"),
        SpecField("labels", ", ".join(f"{k}={v}" for k, v in sorted(c.labels.items()))
                  or "(none)"),
        SpecField("payload", _json_block(c.payload), block=True),
        SpecField("context", _json_block(c.context), block=True),
    ]
    if isinstance(c.policy, Schedule):
        fields.insert(3, SpecField("startingDeadline",
                                   format_duration(c.policy.starting_deadline)))
    return tuple(SpecField(f.label, scrub.text(f.value), f.block) for f in fields)


def _took(op: OperationRecord) -> str:
    if op.finished_at is None:
        return _DASH
    seconds = (op.finished_at - op.submitted_at).total_seconds()
    return format_duration(round(seconds, 1)) if seconds < 10 else approx(seconds)


def _history(intents: Sequence[IntentRecord], operations: Sequence[OperationRecord],
             current: str | None) -> tuple[Attempt, ...]:
    """Every attempt, newest first, with its intent's window and its outcome."""
    by_hash = {i.spec_hash: i for i in intents}
    found = []
    for op in reversed(operations):
        intent = by_hash.get(op.spec_hash)
        error = scrub.value(dict(op.error)) if op.error else {}
        found.append(Attempt(
            attempt=op.attempt + 1, operation_id=scrub.text(op.operation_id),
            spec=op.spec_hash[:12],
            window=intent.window if intent is not None and intent.window else _DASH,
            submitted=moment(op.submitted_at), finished=moment(op.finished_at),
            took=_took(op), outcome=scrub.text(op.status),
            error=str(error.get("title") or ""), error_detail=str(error.get("detail") or ""),
            revision=short_revision(op.revision), revision_full=scrub.text(op.revision),
            current=op.spec_hash == current))
    return tuple(found)


def _until(moment_: datetime, now: datetime) -> str:
    left = (moment_ - now).total_seconds()
    return f"in {approx(left)}" if left >= 0 else f"{approx(-left)} ago"


def _waits(facts: ManifestFacts, current: IntentRecord | None) -> tuple[Wait, ...]:
    """What the manifest waits for: its dependencies, a backoff, the next window."""
    waits: list[Wait] = []
    command, now = facts.command, facts.now
    for dep in command.depends_on if command is not None else ():
        state = facts.states.get(dep, "not loaded")
        waits.append(Wait("dependsOn", f"{dep}: {state}", target=dep,
                          met=state == IntentState.IN_SYNC))
    if (current is not None and current.status == IntentState.FAILED
            and current.next_attempt_at is not None):
        waits.append(Wait("backoff", f"attempt {current.attempts + 1} at "
                          f"{moment(current.next_attempt_at)} "
                          f"({_until(current.next_attempt_at, now)})"))
    if facts.next_window is not None:
        label = "schedule" if command is not None and isinstance(command.policy, Schedule) \
            else "interval"
        waits.append(Wait(label, f"next window at {moment(facts.next_window)} "
                          f"({_until(facts.next_window, now)})"))
    if command is not None and command.suspend:
        waits.append(Wait("suspend", "suspend: true: nothing new is sent until it is "
                          "removed or set to false"))
    row = facts.row
    title = str((row.error or {}).get("title") or "")
    if (row.reason and row.state in (IntentState.WAITING, IntentState.FAILED)) or (
            row.state == IntentState.STALLED and row.reason and row.reason != title):
        waits.append(Wait("planner", scrub.text(row.reason)))
    if row.state in (IntentState.STALLED, IntentState.LOST):
        waits.append(Wait("a human", f"It is {row.state}: no new attempt comes by itself. "
                          "Retry it (below), or change its spec in git."))
    return tuple(waits)


def _retry(facts: ManifestFacts) -> Retry:
    """The CLI command that gives it a fresh retry budget, and whether it would now."""
    parts = ["reconciler", "retry", facts.name]
    if facts.state_path:
        parts += ["--state", scrub.text(facts.state_path)]
    command = shlex.join(parts)
    state = facts.row.state
    if state in RETRYABLE:
        return Retry(True, command, f"It is {state}: the command gives it a fresh retry "
                     "budget and deadline, due now; the daemon picks it up on its next pass.")
    if state == IntentState.IN_SYNC:
        why = "It succeeded: to run it again, change its spec.rerun field in git instead."
    else:
        why = f"It is {state}: there is nothing to retry now."
    return Retry(False, command, why)


def manifest_page(facts: ManifestFacts) -> ManifestPage:
    """The page of one manifest."""
    current = next((i for i in facts.intents if i.spec_hash == facts.row.spec_hash), None)
    command = facts.command
    deps = {n: tuple(ds) for n, ds in facts.depends_on.items()}
    row = scrubbed([row_view(facts.row, command,
                             current.status if current is not None else None)])[0]
    location = (f"{command.file}:{command.line}" if command is not None and command.file
                else "")
    return ManifestPage(
        name=row.name, title=f"{row.name} — ailake-reconciler",
        generated_at=moment(facts.now), row=row, source_location=scrub.text(location),
        spec=_spec(command) if command is not None else (),
        invalid=scrub.text(str(facts.hold.problem or facts.hold.message))
        if facts.hold is not None else "",
        history=_history(facts.intents, facts.operations, facts.row.spec_hash),
        waits=_waits(facts, current), retry=_retry(facts),
        chain=chain_of(facts.name, deps, facts.states),
        leadership=leadership_text(facts.leadership),
        leadership_kind=facts.leadership.value, revision=short_revision(facts.revision))
