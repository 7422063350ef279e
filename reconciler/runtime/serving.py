"""What the daemon's listener serves of it: readiness, ``/status`` and ``/metrics``.

Each reads the daemon's memory (the last load, the last plan, the source's status) and
cheap store reads; a state store that cannot be read (a PostgreSQL server gone away)
makes ``/readyz`` answer not ready, ``/status`` show the store's error instead of the
intents, and ``/metrics`` serve everything but the per-manifest families.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import prometheus_client

from reconciler.errors import StoreError
from reconciler.observe.status import source_item, status_rows
from reconciler.observe.status import status_document as document_of
from reconciler.runtime.readiness import READY_TIMEOUT
from reconciler.source.git import scrub

if TYPE_CHECKING:
    from reconciler.runtime.daemon import Daemon
    from reconciler.store.postgres import PostgresStore

__all__ = ["exposition", "ready", "served_status", "status_document"]


async def ready(daemon: Daemon) -> tuple[bool, str]:
    """``/readyz``: the manifests were loaded once (a git source: its first tree is
    there), a shared store answers, and the API answers. A source failing afterwards
    keeps the last tree and the daemon ready (``source_errors_total`` and the source's
    freshness tell)."""
    if daemon.load is None:
        error = daemon.source.status().last_error
        why = f": {scrub(error, daemon.settings.secrets)}" if error else ""
        return False, f"manifests not loaded yet (source {daemon.source.describe()}){why}"
    assert daemon.client is not None
    if daemon.store is not None and daemon.store.shared:
        store_ok, why = await _store_ready(cast("PostgresStore", daemon.store))
        if not store_ok:
            return False, why
    return await daemon.api_probe.check(daemon.client)


async def _store_ready(store: PostgresStore) -> tuple[bool, str]:
    """Whether the shared store answers now (a PostgreSQL server can go away under a
    running daemon; a SQLite file cannot), within the probe's time."""
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), READY_TIMEOUT)
    except TimeoutError:
        return False, f"state store {store.location} did not answer within {READY_TIMEOUT:g}s"
    except StoreError as exc:
        return False, str(exc)
    return True, "state store reachable"


def status_document(daemon: Daemon, *, with_source: bool = False) -> dict[str, Any]:
    """Every manifest with its state, attempts and last operation (held ones ``invalid``
    with FILE:LINE); ``with_source`` (what ``/status`` serves): also the source (kind,
    location, revision, last success, errors, last error, scrubbed) and why orphaning is
    withheld."""
    latest = daemon.store.latest_by_name() if daemon.store else {}
    rows = status_rows(latest, daemon.plan.views if daemon.plan else None)
    load = daemon.load
    revision, problems = (load.revision, load.problems) if load else (None, ())
    if not with_source:
        return document_of(rows, revision=revision, problems=problems)
    verdict = daemon.verdict
    return document_of(
        rows, revision=revision, problems=problems,
        source=source_item(daemon.source.status(), daemon.settings.secrets),
        withheld=verdict.reason if verdict is not None and not verdict.may_orphan else None)


def served_status(daemon: Daemon) -> dict[str, Any]:
    """``/status``: :func:`status_document` with the source; while the state store cannot
    be read, the source and the store's error instead of the intents."""
    try:
        return status_document(daemon, with_source=True)
    except StoreError as exc:
        daemon.store_trouble(exc, "serving /status")
        document = document_of([], revision=daemon.load.revision if daemon.load else None,
                               source=source_item(daemon.source.status(),
                                                  daemon.settings.secrets))
        document["storeError"] = str(exc)
        return document


def exposition(daemon: Daemon) -> bytes:
    """``/metrics``: the source's freshness and errors as of now, then every metric (while
    the state store cannot be read: all but the per-manifest families)."""
    assert daemon.metrics is not None
    daemon.metrics.source_seen(daemon.source.status())
    try:
        return daemon.metrics.exposition()
    except StoreError as exc:
        daemon.store_trouble(exc, "serving /metrics")
        return prometheus_client.generate_latest(daemon.metrics.registry)
