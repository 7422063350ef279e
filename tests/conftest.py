"""The PostgreSQL test server (one per session, started on first use), the
``store_backend`` fixture that runs a store test on SQLite and on PostgreSQL, and a
logging reset so that no test sees the log level an earlier in-process CLI call set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from pg_support import Backend, PgServer, started_server


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults (CLI commands configure level=error)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    yield from started_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty store location: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        backend = Backend("sqlite", str(tmp_path / "state" / "reconciler.db"))
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        database = server.create_database()
        backend = Backend("postgresql", server.url(database), server, database)
    try:
        yield backend
    finally:
        backend.close()
