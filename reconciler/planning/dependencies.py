"""``dependsOn`` facts: which manifests are blocked by a stalled dependency, and which
wait on something only a human can start."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.model.lifecycle import IntentState
from reconciler.model.records import IntentRecord
from reconciler.planning.windows import Desired

__all__ = ["DependencyFacts", "current_record", "dependencies_first", "dependency_facts"]


def current_record(wants: Mapping[str, Desired], recorded: Mapping[str, IntentRecord],
                   name: str) -> IntentRecord | None:
    """The record of the intent manifest ``name`` asks for now (None: not loaded, or
    not recorded)."""
    want = wants.get(name)
    return recorded.get(want.spec_hash) if want else None


def dependencies_first(wants: Mapping[str, Desired]) -> list[str]:
    """The names of the manifests with dependencies, ordered so every loaded dependency
    comes before its dependents (Kahn's algorithm; members of a cycle, which validation
    already refuses, are left out). Depends only on the manifests, not on the records."""
    involved = {n for n, w in wants.items() if w.command.depends_on}
    involved |= {d for n in involved for d in wants[n].command.depends_on if d in wants}
    waiting = {n: {d for d in wants[n].command.depends_on if d in wants} for n in involved}
    dependents: dict[str, list[str]] = {n: [] for n in involved}
    for name, deps in waiting.items():
        for dep in deps:
            dependents[dep].append(name)
    ready = sorted(n for n, deps in waiting.items() if not deps)
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for nxt in dependents[name]:
            waiting[nxt].discard(name)
            if not waiting[nxt]:
                ready.append(nxt)
    return order


@dataclass(frozen=True)
class DependencyFacts:
    """What the dependencies of every desired manifest mean for it."""

    #: name -> (its dependency through which it is blocked, the stalled root)
    blocked_by: Mapping[str, tuple[str, str]]
    #: names waiting on something only a human can start
    parked: frozenset[str]

    def blocker(self, name: str) -> str | None:
        """Why ``name`` can never start without human help (a stalled dependency)."""
        if name not in self.blocked_by:
            return None
        dep, root = self.blocked_by[name]
        cause = (f"dependency {dep!r} stalled" if dep == root else
                 f"dependency {dep!r} is blocked: {root!r} stalled")
        return f"{cause}; fix it or run 'reconciler retry {root}'"

    def is_parked(self, name: str) -> bool:
        """``name`` waits on a dependency that cannot start without a human: one that is
        not loaded (removed or invalid) or suspended, directly or through others. Such a
        wait is settled: ``--once`` must not wait for it forever."""
        return name in self.parked


def dependency_facts(wants: Mapping[str, Desired], recorded: Mapping[str, IntentRecord],
                     *, order: Sequence[str] | None = None) -> DependencyFacts:
    """The facts of every desired manifest, computed dependencies-first (no recursion:
    chains may be long). A dependency in sync neither blocks nor parks; a stalled one
    blocks, and so does a blocked one, transitively; one that is not loaded, parked, or
    suspended and not yet recorded (or failed) parks its dependents. ``order``:
    :func:`dependencies_first` of ``wants``, when known already."""
    blocked_by: dict[str, tuple[str, str]] = {}
    parked: set[str] = set()
    for name in order if order is not None else dependencies_first(wants):
        for dep in wants[name].command.depends_on:
            rec = current_record(wants, recorded, dep)
            if rec is not None and rec.status == IntentState.IN_SYNC:
                continue
            if rec is not None and rec.status in (IntentState.STALLED, IntentState.LOST):
                blocked_by.setdefault(name, (dep, dep))
            elif dep in blocked_by:
                blocked_by.setdefault(name, (dep, blocked_by[dep][1]))
            if dep not in wants or dep in parked or (
                    wants[dep].command.suspend
                    and (rec is None or rec.status == IntentState.FAILED)):
                parked.add(name)
    return DependencyFacts(blocked_by, frozenset(parked))
