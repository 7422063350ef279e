"""Which manifests keep their state when the source cannot be trusted to say they are gone.

Pure: no I/O, no clock. The rules (DESIGN section 4, ``invalid``):

- a manifest whose document fails validation (its ``metadata.name`` readable) keeps its last
  valid intent: nothing new is submitted, it is not orphaned, it shows as ``invalid`` with
  FILE:LINE (:attr:`HoldReason.INVALID`);
- a file that cannot be parsed at all keeps every name it held the last time it parsed
  (:attr:`HoldReason.BROKEN_FILE`);
- only a manifest absent from a source that loaded cleanly is orphaned: while the load is not
  clean (a broken file, an unreadable folder, a refused symlink), every other name known from
  before is held too (:attr:`HoldReason.UNCLEAN_SOURCE`);
- an empty source is suspicious: no manifest now where the last good load (or, after a
  restart, the store) had some orphans nothing unless ``allow_empty``
  (:attr:`HoldReason.EMPTY_SOURCE`).

The caller keeps :attr:`Continuity.memory` between loads and passes it back; it starts as
None (after a restart the store's live names, ``recorded``, stand in for it). A name that is
valid now is never held: its current document decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from reconciler.errors import Problem
from reconciler.model.manifest import Hold, HoldReason, LoadResult

__all__ = [
    "Continuity",
    "Hold",
    "HoldReason",
    "SourceMemory",
    "continuity",
    "held_names",
    "with_held",
]


@dataclass(frozen=True)
class SourceMemory:
    """What the source held the last time each file parsed: manifest name -> file."""

    names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: the revision of the last load that was clean and trusted
    revision: str | None = None

    @classmethod
    def of(cls, load: LoadResult) -> SourceMemory:
        """The memory of one load taken as good."""
        return cls(MappingProxyType(_names_now(load)), load.revision)


@dataclass(frozen=True)
class Continuity:
    """The verdict on one load: which names are held, and whether others may be orphaned."""

    held: Mapping[str, Hold]
    #: absent names that are not held may be orphaned (the load is clean and trusted)
    may_orphan: bool
    #: no manifest now, some before, and ``allow_empty`` not given
    suspicious_empty: bool
    #: pass back with the next load
    memory: SourceMemory
    #: why orphaning is withheld, for the logs ('' when it is not)
    reason: str = ""

    @property
    def names(self) -> frozenset[str]:
        """The held names: records to keep as they are (no orphan, nothing new sent)."""
        return frozenset(self.held)

    @property
    def invalid(self) -> Mapping[str, Hold]:
        """The held names whose own document or file is at fault (views: ``invalid``)."""
        return {n: h for n, h in self.held.items() if h.shows_invalid}


def _names_now(load: LoadResult) -> dict[str, str]:
    """Every manifest name the load saw, valid or not, with its file."""
    names = {name: problem.file for name, problem in load.invalid_names.items()}
    names.update({c.name: c.file for c in load.commands})  # the valid document's file wins
    return names


def continuity(
    memory: SourceMemory | None,
    current: LoadResult,
    *,
    allow_empty: bool = False,
    recorded: Iterable[str] = (),
) -> Continuity:
    """Which names of ``memory`` (the last good state) and ``current`` must be held.

    ``recorded``: the names with a live (not orphaned, not superseded-only) record in the
    state store; they stand for the memory after a restart, and are held as well while
    orphaning is withheld, so the planner needs only :attr:`Continuity.names`.
    """
    desired = {c.name for c in current.commands}
    now = _names_now(current)
    known = dict(memory.names) if memory is not None else {}
    live = frozenset(recorded)
    held: dict[str, Hold] = {}
    for name, problem in current.invalid_names.items():
        if name not in desired:
            held[name] = Hold(name, HoldReason.INVALID, problem,
                              f"invalid: {problem}; its last valid intent is kept")
    first_problem: dict[str, Problem] = {}
    for found in current.problems:
        first_problem.setdefault(found.file, found)
    broken = set(current.broken_files)
    for name, file in known.items():
        if name in desired or name in held or file not in broken:
            continue
        cause = first_problem.get(file)
        held[name] = Hold(name, HoldReason.BROKEN_FILE, cause,
                          f"its file cannot be parsed ({cause or file}); "
                          "its last valid intent is kept")

    before = set(known) if memory is not None else set(live)
    empty = not now and not current.broken_files
    suspicious = empty and bool(before) and not allow_empty
    if suspicious:
        reason = (f"the source has no manifests (revision {current.revision}) where "
                  f"{len(before)} were known; nothing is orphaned (--allow-empty to accept it)")
        for name in sorted(before | live):
            if name not in held:
                held[name] = Hold(name, HoldReason.EMPTY_SOURCE, None, reason)
        return Continuity(MappingProxyType(held), False, True,
                          memory if memory is not None else SourceMemory(), reason)
    if not current.clean:
        count = len(current.broken_files)
        reason = (f"the source did not load cleanly ({count} file(s) or folder(s) could "
                  "not be read or parsed); nothing absent from it is orphaned")
        for name in sorted(set(known) | live):
            if name not in desired and name not in held:
                held[name] = Hold(name, HoldReason.UNCLEAN_SOURCE, None,
                                  "not found in the source, which did not load cleanly; "
                                  "kept as it is")
        merged = {**known, **now}
        kept = SourceMemory(MappingProxyType(merged),
                            memory.revision if memory is not None else None)
        return Continuity(MappingProxyType(held), False, False, kept, reason)
    return Continuity(MappingProxyType(held), True, False, SourceMemory.of(current))


def held_names(
    previous: LoadResult | None,
    current: LoadResult,
    *,
    allow_empty: bool = False,
) -> frozenset[str]:
    """The names to keep, given the last good load and the current one (a shorthand of
    :func:`continuity` for callers that keep the last good :class:`LoadResult`)."""
    memory = SourceMemory.of(previous) if previous is not None else None
    return continuity(memory, current, allow_empty=allow_empty).names


def with_held(load: LoadResult, verdict: Continuity) -> LoadResult:
    """``load`` carrying the verdict's held manifests (:attr:`LoadResult.held`), which is
    what the engine passes to the planner."""
    return replace(load, held=verdict.held)
