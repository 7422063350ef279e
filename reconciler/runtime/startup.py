"""The daemon's start-up: the one start-up log line, the database secrets it scrubs, and
the checked opening of the state store.

Split out of :mod:`reconciler.runtime.daemon` (which re-exports :func:`database_secrets`).
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from reconciler.errors import StoreError
from reconciler.runtime.settings import DaemonSettings
from reconciler.source.git import scrub
from reconciler.source.kinds import Source
from reconciler.store import StateStore, Store, open_store
from reconciler.store.locations import is_postgres_url

__all__ = ["database_secrets", "open_checked_store", "startup_fields"]

log = structlog.get_logger("reconciler.runtime.daemon")


def database_secrets(state: str) -> tuple[str, ...]:
    """The password of a PostgreSQL ``--state`` URL, and the content of its password file
    now (for the scrubber); empty for SQLite or when there is none."""
    if not is_postgres_url(state):
        return ()
    from reconciler.store.pg_dsn import PostgresDsn  # psycopg: only for PostgreSQL

    try:
        dsn = PostgresDsn.parse(state)
        found = [dsn.url_password]
        if dsn.password_file is not None:
            found.append(dsn.password())
    except StoreError:  # the store reports it when it opens
        return ()
    return tuple(p for p in found if p)


def startup_fields(s: DaemonSettings, source: Source) -> dict[str, Any]:
    """The one start-up line: the API, the source, the store (no password), the
    interval and the limits."""
    return {
        "api_url": s.client.base_url, "source": source.describe(),
        "store": scrub(s.state, database_secrets(s.state)), "interval": s.interval,
        "listen": s.listen, "once": s.once,
        "max_in_flight": s.engine.limits.max_in_flight,
        "max_per_service": s.engine.limits.max_per_service,
        "rate_limit": "auto" if s.client.adaptive_rate else s.client.rate_limit,
        "request_timeout": s.client.timeout,
        "settle_window": s.engine.settle,
        "not_found_tolerance": s.engine.not_found_tolerance,
        "grace_period": s.grace_period,
    }


def open_checked_store(s: DaemonSettings) -> StateStore:
    """The state store, checked: a SQLite file passes ``PRAGMA quick_check`` or the
    daemon does not start (:class:`~reconciler.store.sqlite.CorruptStoreError` says how
    to recover)."""
    store = open_store(s.state, retention=s.retention)
    if isinstance(store, Store):
        started = time.monotonic()
        try:
            store.check(quick=True)
        except StoreError:
            store.close()
            raise
        log.info("store_checked", path=store.path, check="quick_check",
                 seconds=round(time.monotonic() - started, 3))
    return store
