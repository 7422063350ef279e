"""What a plan is made of: actions for the engine and a view of every manifest.

Action kinds (DESIGN section 1, terraform-plan style):

========================  ======================================================  =======
kind                      meaning                                                 change?
========================  ======================================================  =======
``submit``                first attempt of a new intent (after a recovery probe)  yes
``retry``                 next attempt after a failure, backoff elapsed           yes
``resolve``               a POST whose outcome is unknown: look it up first       yes
``poll``                  read an in-flight operation                             no
``timeout``               in flight past its deadline: mark failed, stop          yes
``give-up``               retry impossible (deadline passed): mark stalled        yes
``orphan``                manifest removed or changed: retire the old record      yes
``wait-backoff``          failed; next attempt at ``at``                          no
``wait-dependency``       a dependency has not succeeded (or blocks: stalled)     no
``wait-schedule``         this window's tick was missed; next one at ``at``       no
``wait-capacity``         in-flight limits reached; submitted when a slot frees   no
``noop``                  in sync, suspended, stalled, or a poll not due yet      no
========================  ======================================================  =======
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from reconciler.model.lifecycle import IntentState
from reconciler.planning.windows import Desired

__all__ = ["CHANGE_KINDS", "Action", "ActionKind", "Plan", "View"]

ActionKind = Literal[
    "submit", "retry", "resolve", "poll", "timeout", "give-up", "orphan",
    "wait-backoff", "wait-dependency", "wait-schedule", "wait-capacity", "noop",
]
CHANGE_KINDS: frozenset[str] = frozenset(
    {"submit", "retry", "resolve", "timeout", "give-up", "orphan"}
)


@dataclass(frozen=True)
class Action:
    """One step for the engine, or one line of ``reconciler plan``."""

    kind: ActionKind
    name: str
    spec_hash: str
    reason: str = ""
    attempt: int | None = None
    operation_id: str | None = None
    at: datetime | None = None
    #: resolve: whether a 404 may be followed by the POST (False once not desired)
    may_submit: bool = True
    #: orphan of a changed manifest's previous record: retiring it is bookkeeping of the
    #: store (nothing is sent), so it is executed but is not a change to review
    superseded: bool = False

    @property
    def changes(self) -> bool:
        return self.kind in CHANGE_KINDS and not self.superseded

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.kind, "name": self.name, "specHash": self.spec_hash,
            "reason": self.reason, "attempt": self.attempt, "operationId": self.operation_id,
            "at": self.at.isoformat() if self.at else None,
        }


@dataclass(frozen=True)
class View:
    """How one manifest stands (status tables, the ``intents`` gauge, ``--once``)."""

    name: str
    state: IntentState
    reason: str = ""
    spec_hash: str | None = None
    #: ``--once`` may stop waiting for it: nothing will change before a future window
    settled: bool = False


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    views: tuple[View, ...]
    #: the earliest future moment at which planning again could yield a different plan
    wake_at: datetime | None = None
    desired: Mapping[str, Desired] = field(default_factory=dict)
    #: the starts (``submit``, ``retry``) the in-flight limits held back, in plan order:
    #: each ``wait-capacity`` action's start, which the engine makes when a slot frees
    queued: tuple[Action, ...] = ()

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.changes)

    @property
    def executable(self) -> tuple[Action, ...]:
        """Actions that call the API or write the store."""
        return tuple(a for a in self.actions if a.changes or a.kind in ("poll", "orphan"))
