"""The PostgreSQL store while its server is down, on a real server (tests/pg_support.py).

A running daemon calls the store from its event loop, so a call must not block for the
pool's whole timeout while the server is away: once a connection could not be made, each
call tries one direct connection and fails (or, once the server is back, succeeds) at
once. The daemon under a real restart: tests/chaos/test_postgres_restart.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pg_support import PASSWORD, PgServer

from reconciler.errors import StoreError
from reconciler.store.postgres import PostgresStore


@pytest.fixture
def url(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


def _timed(call) -> tuple[float, BaseException | None]:
    started = time.perf_counter()
    try:
        call()
    except StoreError as exc:
        return time.perf_counter() - started, exc
    return time.perf_counter() - started, None


def test_calls_fail_fast_while_the_server_is_down_and_succeed_once_it_is_back(
        pg_server: PgServer, url: str) -> None:
    with PostgresStore(url, timeout=10.0) as store:  # the pool's own timeout: 10 s
        store.ping()
        pg_server.stop()
        try:
            first, first_error = _timed(store.ping)
            again, again_error = _timed(store.intents)
        finally:
            pg_server.start()
        back, back_error = _timed(store.ping)
        assert back_error is None, back_error
        assert store.intents() == {}
    # the first call learns the server is gone (a short wait for the pool, a direct try)
    assert isinstance(first_error, StoreError) and first < 6.0, (first, first_error)
    # the next ones do not wait for the pool at all
    assert isinstance(again_error, StoreError) and again < 1.0, (again, again_error)
    # and once it is back, a call is served at once, not after the pool's reconnection
    # backoff
    assert back < 2.0, back
    for error in (first_error, again_error):
        assert PASSWORD not in str(error)
        assert "postgresql://postgres@127.0.0.1" in str(error)
