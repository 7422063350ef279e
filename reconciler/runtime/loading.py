"""The daemon's source load: read the tree, decide what is held (continuity), feed the metrics.

Split out of :mod:`reconciler.runtime.daemon`; these functions take the
:class:`~reconciler.runtime.daemon.Daemon` whose state they update.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import structlog

from reconciler.errors import SourceError
from reconciler.model.manifest import LoadResult
from reconciler.model.records import IntentRecord
from reconciler.source.continuity import continuity, with_held
from reconciler.source.git import scrub

if TYPE_CHECKING:
    from reconciler.runtime.daemon import Daemon

__all__ = ["load_source", "poke_for_a_tree", "reported"]

log = structlog.get_logger("reconciler.runtime.daemon")


def poke_for_a_tree(daemon: Daemon, *, first_retry: float) -> None:
    """No tree yet: ask the source to fetch again, backing off (``first_retry`` doubling up
    to the interval), so a transient failure of the first fetch costs seconds."""
    now = time.monotonic()
    if now < daemon._no_tree_poke_at:
        return
    daemon.source.poke()
    daemon._no_tree_poke_at = now + daemon._no_tree_retry
    daemon._no_tree_retry = min(daemon._no_tree_retry * 2, max(daemon.settings.interval,
                                                               first_retry))


def load_source(daemon: Daemon, reasons: Sequence[str]) -> None:
    """Load the source's tree, decide what is held (:func:`continuity`), feed the
    metrics. A source that cannot be read (git: no tree yet) keeps the last load."""
    assert daemon.metrics is not None and daemon.store is not None
    try:
        load = daemon.source.load()
    except SourceError as exc:
        message = scrub(str(exc), daemon.settings.secrets)
        if message != daemon._source_error:
            log.warning("source_unavailable", source=daemon.source.describe(),
                        error=message, serving=daemon.load.revision if daemon.load else None)
        daemon._source_error = message
        daemon.metrics.source_seen(daemon.source.status())
        return
    daemon._source_error = None
    generation = daemon.store.generation()
    if load is daemon._raw_load and generation is not None and generation == daemon._raw_generation:
        # the very tree of the last load (the loader hands back its result) on a store
        # that did not change: the same verdict, the same series; only freshness moved
        daemon.metrics.source_seen(daemon.source.status())
        return
    daemon._raw_load, daemon._raw_generation = load, generation
    records = daemon.store.intents()
    verdict = continuity(daemon._memory, load, allow_empty=daemon.settings.allow_empty,
                         recorded={r.name for r in records.values()})
    # The memory is what the source held at a load taken as good. Until there is one
    # (a restart on a broken or empty tree) the store's live names stand for it.
    if verdict.may_orphan or daemon._memory is not None:
        daemon._memory = verdict.memory
    load = with_held(load, verdict)
    previous, before = daemon.load, daemon.verdict
    changed = previous is None or load.revision != previous.revision
    for problem in load.problems if changed else ():
        log.error("invalid_manifest", file=problem.file, line=problem.line,
                  name=problem.name, message=problem.message)
    if not verdict.may_orphan and (changed or before is None
                                   or before.reason != verdict.reason):
        log.warning("orphaning_withheld", reason=verdict.reason, revision=load.revision,
                    held=len(verdict.held), names=sorted(verdict.names)[:20],
                    empty=verdict.suspicious_empty)
    daemon.load, daemon.verdict = load, verdict
    daemon.metrics.loaded(reported(load, records), invalid=load.invalid,
                          revision=load.revision,
                          invalid_names={name: hold.problem.file if hold.problem else ""
                                         for name, hold in verdict.invalid.items()},
                          empty_withheld=verdict.suspicious_empty,
                          source=daemon.source.status())
    if changed:
        log.info("manifests_loaded", revision=load.revision, manifests=len(load.commands),
                 invalid=load.invalid, files=load.files, held=len(verdict.held),
                 source=daemon.source.kind, trigger=",".join(reasons))


def reported(load: LoadResult,
             records: Mapping[str, IntentRecord]) -> list[tuple[str, str, str]]:
    """(name, service, command) of every manifest whose per-manifest series are
    exported: the valid ones, and the held ones from their latest live record (so
    ``command_failed``/``command_stalled`` stay while a manifest is invalid)."""
    result = [(c.name, c.service.label, c.command) for c in load.commands]
    latest: dict[str, IntentRecord] = {}
    for rec in records.values():
        if rec.name in load.held and rec.name not in load.by_name:
            shown = latest.get(rec.name)
            if shown is None or rec.updated_at >= shown.updated_at:
                latest[rec.name] = rec
    result += [(r.name, r.service, r.command) for r in latest.values()]
    return result
