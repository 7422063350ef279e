"""What one plan can hand the next: the parts that depend only on inputs that did not change.

A daemon plans the same manifests over and over; most of them have no schedule and are
settled (in sync, stalled, lost), so their intent and their action are the same objects as
last time. A :class:`PlanMemo` keeps, for each manifest (its very command object, which the
loader keeps while its file is unchanged):

- the intent of every manifest without a policy (it never depends on ``now``);
- the dependencies-first order of the manifests that have dependencies (for one load: the
  same ``desired`` sequence);
- the action and view of every settled manifest, keyed by the very record they came from
  (the store hands out the same record objects until a record changes).

Values are only reused for the inputs they were made from, so a plan made with a memo is
the plan made without one; the memo only saves the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.model.manifest import Once, ServiceCommand
from reconciler.model.records import IntentRecord
from reconciler.planning.actions import Action, View
from reconciler.planning.windows import Desired, desired_intent

__all__ = ["PlanMemo"]


@dataclass
class PlanMemo:
    """Reusable parts of the plans of one load (see the module docstring)."""

    #: the load's commands the parts below belong to (compared by identity)
    commands: Sequence[ServiceCommand] | None = None
    constant: dict[str, Desired] = field(default_factory=dict)
    order: list[str] | None = None
    #: name -> (the intent, the record, its action and view)
    settled: dict[str, tuple[Desired, IntentRecord, Action, View]] = field(
        default_factory=dict)

    def begin(self, commands: Sequence[ServiceCommand]) -> None:
        """Start a plan of ``commands``. Another load keeps what belongs to its unchanged
        manifests (the loader hands out the same command objects for unchanged files;
        each kept value is checked against its command) and forgets the rest."""
        if commands is self.commands:
            return
        self.commands = commands
        self.order = None
        current = {c.name: c for c in commands}
        self.constant = {n: d for n, d in self.constant.items()
                         if current.get(n) is d.command}
        self.settled = {n: kept for n, kept in self.settled.items()
                        if current.get(n) is kept[0].command}

    def desired(self, command: ServiceCommand, now: datetime,
                not_before: str | None) -> Desired:
        """:func:`~reconciler.planning.windows.desired_intent`, kept for a command that
        runs once (its intent never depends on ``now``)."""
        if not isinstance(command.policy, Once):
            return desired_intent(command, now, not_before)
        want = self.constant.get(command.name)
        if want is None or want.command is not command:
            want = self.constant[command.name] = desired_intent(command, now, not_before)
        return want

    def dependency_order(self, make: Callable[[], list[str]]) -> list[str]:
        if self.order is None:
            self.order = make()
        return self.order

    def reuse(self, want: Desired, rec: IntentRecord | None) -> tuple[Action, View] | None:
        """The action and view kept for ``want`` when its record is the one they were
        made from."""
        hit = self.settled.get(want.name)
        if hit is None or rec is None or hit[0] is not want or hit[1] is not rec:
            return None
        return hit[2], hit[3]

    def keep(self, want: Desired, rec: IntentRecord, action: Action, view: View) -> None:
        self.settled[want.name] = (want, rec, action, view)
