"""What the web view reads: a small, typed, read-only surface and the facts it hands over.

The daemon builds a :class:`WebSurface` (``reconciler.runtime.web_surface``); the routes
(:mod:`.routes`) call it on every request and turn what it returns into pages with the pure
functions of :mod:`.pages` and :mod:`.manifest_page`. Nothing here can change the daemon:
each field is a function that only reads, and the values are frozen.

The rows are the ones of ``/status`` (:func:`reconciler.observe.status.status_rows`, the one
status-row builder); everything served is scrubbed on the way out (:mod:`.pages`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from reconciler.errors import Problem
from reconciler.model.manifest import Hold, ServiceCommand
from reconciler.model.records import IntentRecord, OperationRecord
from reconciler.observe.status import StatusRow

__all__ = ["Leadership", "ManifestFacts", "OverviewFacts", "WebSurface"]


class Leadership(StrEnum):
    """Whether this replica acts."""

    SINGLE = "single"  #: no election: the only replica, it acts
    LEADER = "leader"  #: it holds the Lease (or the PostgreSQL lock) and acts
    STANDBY = "standby"  #: another replica leads; this one reconciles nothing


@dataclass(frozen=True)
class OverviewFacts:
    """Every manifest as the daemon knows it at :attr:`now`."""

    now: datetime
    #: one per manifest (and per recorded name whose manifest is gone), sorted by name,
    #: with :attr:`~reconciler.observe.status.StatusRow.progress` while in flight
    rows: Sequence[StatusRow]
    #: the loaded, valid manifests by name
    commands: Mapping[str, ServiceCommand] = field(
        default_factory=lambda: MappingProxyType({}))
    #: every problem of the last load (FILE:LINE)
    problems: Sequence[Problem] = ()
    #: the manifest revision served (None: nothing loaded yet)
    revision: str | None = None
    #: the source as ``/status`` has it (:func:`reconciler.observe.status.source_item`)
    source: Mapping[str, Any] | None = None
    #: why orphaning is withheld (None: it is not)
    withheld: str | None = None
    leadership: Leadership = Leadership.SINGLE
    #: the recorded state of each name's current intent (for the last outcome)
    recorded: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: when the next window of an interval or schedule manifest starts, by name
    next_windows: Mapping[str, datetime] = field(
        default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ManifestFacts:
    """One manifest: its row, its spec as loaded, its history, what it waits for."""

    now: datetime
    name: str
    row: StatusRow
    #: the spec as loaded (None: not loaded now: invalid, removed, or nothing loaded)
    command: ServiceCommand | None
    #: why it is held (its document invalid now, FILE:LINE), else None
    hold: Hold | None
    #: every intent of the manifest, oldest first (history included)
    intents: Sequence[IntentRecord]
    #: every attempt, oldest first
    operations: Sequence[OperationRecord]
    #: the state of every manifest by name (the dependency chain and its colours)
    states: Mapping[str, str]
    #: every loaded manifest's dependsOn, by name (to draw the chain it is part of)
    depends_on: Mapping[str, Sequence[str]]
    next_window: datetime | None = None
    revision: str | None = None
    leadership: Leadership = Leadership.SINGLE
    #: the ``--state`` the CLI needs to reach the same store (None: to be left out, e.g.
    #: a database URL)
    state_path: str | None = None


@dataclass(frozen=True)
class WebSurface:
    """What the web view may read in the daemon, and nothing else. Its functions are
    called on the daemon's event loop (as ``/status`` reads it: one consistent moment);
    the pages are then built and rendered off the loop, in a worker thread."""

    #: every manifest now
    overview: Callable[[], OverviewFacts]
    #: one manifest now; None when no such name is loaded or recorded
    manifest: Callable[[str], ManifestFacts | None]
