"""What the daemon's listener may read: the :class:`~reconciler.runtime.listener.Surface`
of the daemon, and the web view's read-only surface
(:class:`~reconciler.observe.web.data.WebSurface`) over the daemon's state.

Split out of :mod:`reconciler.runtime.daemon`. Each request reads only what is in memory
(the last load, the last plan, the source's status) plus cheap store reads: the latest
record of every name (memoized by the store) for the overview; one manifest's intents and
operations for its page. Typical durations (for "typically 10m") are read at most every
:data:`TYPICAL_EVERY` seconds, and only while something is in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from reconciler.execution.timing import Durations
from reconciler.model.records import IntentRecord
from reconciler.model.states import IntentState
from reconciler.observe.status import StatusRow, Typical, source_item, status_rows
from reconciler.observe.web.data import Leadership, ManifestFacts, OverviewFacts, WebSurface
from reconciler.planning.planner import View
from reconciler.runtime import serving
from reconciler.runtime.listener import Surface

if TYPE_CHECKING:
    from reconciler.runtime.daemon import Daemon

__all__ = ["DaemonView", "listener_surface"]

#: seconds a read of the typical command durations is reused
TYPICAL_EVERY = 60.0


def listener_surface(daemon: Daemon) -> Surface:
    """Everything the listener serves of ``daemon``; the web view only with ``--ui``."""
    return Surface(metrics=partial(serving.exposition, daemon), healthy=daemon.healthy,
                   ready=partial(serving.ready, daemon),
                   status=partial(serving.served_status, daemon), trigger=daemon.trigger,
                   web=DaemonView(daemon).surface() if daemon.settings.ui else None)


class DaemonView:
    """The web view's reads of one daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._typical: tuple[float, Typical] | None = None

    def surface(self) -> WebSurface:
        return WebSurface(overview=self.overview, manifest=self.manifest)

    # ------------------------------------------------------------------ shared facts

    def _leadership(self) -> Leadership:
        elector = self.daemon.elector
        if elector is None:
            return Leadership.SINGLE
        return Leadership.LEADER if elector.is_leader else Leadership.STANDBY

    def _timeouts(self) -> dict[str, timedelta]:
        load = self.daemon.load
        return {c.name: c.timeout for c in load.commands} if load is not None else {}

    def _typical_of(self, records: Mapping[str, IntentRecord]) -> Typical | None:
        """The typical duration of a command (None while nothing is in flight)."""
        store = self.daemon.store
        if store is None or not any(r.in_flight for r in records.values()):
            return None
        now = time.monotonic()
        if self._typical is None or now - self._typical[0] > TYPICAL_EVERY:
            self._typical = (now, Durations(store.recent_durations()).typical)
        return self._typical[1]

    def _rows(self, latest: Mapping[str, IntentRecord],
              views: Iterable[View] | None) -> list[StatusRow]:
        """The status rows (:func:`~reconciler.observe.status.status_rows`, as ``/status``
        has them) with the progress of what is in flight."""
        return status_rows(latest, views, now=self.daemon.clock(), timeouts=self._timeouts(),
                           typical=self._typical_of(latest))

    # ------------------------------------------------------------------ the pages

    def overview(self) -> OverviewFacts:
        """Every manifest: the rows of ``/status`` (with progress), the load, the source."""
        d = self.daemon
        now = d.clock()
        latest = d.store.latest_by_name() if d.store is not None else {}
        plan, load, verdict = d.plan, d.load, d.verdict
        return OverviewFacts(
            now=now, rows=self._rows(latest, plan.views if plan is not None else None),
            commands=load.by_name if load is not None else {},
            problems=load.problems if load is not None else (),
            revision=load.revision if load is not None else None,
            source=source_item(d.source.status(), d.settings.secrets),
            withheld=(verdict.reason if verdict is not None and not verdict.may_orphan
                      else None),
            leadership=self._leadership(),
            recorded={n: r.status.value for n, r in latest.items()},
            next_windows={n: w.next_window for n, w in plan.desired.items()
                          if w.next_window is not None} if plan is not None else {})

    def manifest(self, name: str) -> ManifestFacts | None:
        """One manifest (None: neither loaded, planned nor recorded)."""
        d = self.daemon
        plan, load = d.plan, d.load
        intents = d.store.intents_named(name) if d.store is not None else []
        latest = max(intents, key=lambda r: (r.updated_at, r.created_at), default=None)
        view = next((v for v in plan.views if v.name == name), None) if plan else None
        command = load.by_name.get(name) if load is not None else None
        if latest is None and view is None and command is None:
            return None
        views = None if plan is None else [view] if view is not None else []
        rows = self._rows({name: latest} if latest is not None else {}, views)
        row = rows[0] if rows else StatusRow(name, IntentState.WAITING, "not planned yet")
        states = {v.name: v.state.value for v in plan.views} if plan is not None else {}
        states.setdefault(name, row.state)
        desired = plan.desired.get(name) if plan is not None else None
        store_path = d.settings.state
        return ManifestFacts(
            now=d.clock(), name=name, row=row, command=command,
            hold=load.held.get(name) if load is not None else None, intents=intents,
            operations=d.store.operations(name=name) if d.store is not None else [],
            states=states,
            depends_on={c.name: c.depends_on for c in load.commands} if load else {},
            next_window=desired.next_window if desired is not None else None,
            revision=load.revision if load is not None else None,
            leadership=self._leadership(),
            state_path=None if "://" in store_path else store_path)
