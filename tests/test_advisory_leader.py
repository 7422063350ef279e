"""Leadership by a PostgreSQL advisory lock, on a real server (tests/pg_support.py).

Two electors on one database: exactly one leads; killing the leader's lock connection
(``pg_terminate_backend``) makes it lose at once and the other take over within a retry
period; a release hands over; a leader whose checks stop answering steps down by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from pg_support import PASSWORD, PgServer

from reconciler.errors import ConfigError
from reconciler.runtime.advisory import HELD, JITTER, AdvisoryLeader, AdvisorySettings, lock_key

RETRY = 0.2


@pytest.fixture
def database(pg_server: PgServer) -> Iterator[str]:
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


def leader(pg_server: PgServer, database: str, identity: str, **kw) -> AdvisoryLeader:
    changes: list[bool] = []
    settings = AdvisorySettings(url=pg_server.url(database), identity=identity,
                                retry_period=kw.pop("retry_period", RETRY),
                                renew_deadline=kw.pop("renew_deadline", 2.0),
                                idle_timeout=kw.pop("idle_timeout", 5.0), **kw)
    elector = AdvisoryLeader(settings, on_change=changes.append)
    elector.changes = changes  # type: ignore[attr-defined]
    return elector


@contextlib.asynccontextmanager
async def running(*electors: AdvisoryLeader) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(e.run()) for e in electors]
    try:
        yield
    finally:
        for e in electors:
            await e.release()
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def until(predicate, timeout: float = 5.0, step: float = 0.002) -> float:
    """Seconds until ``predicate()`` held (fails after ``timeout``)."""
    started = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - started < timeout, "timed out"
        await asyncio.sleep(step)
    return time.perf_counter() - started


def advisory_locks(pg_server: PgServer, database: str) -> int:
    with pg_server.admin(database) as conn:
        row = conn.execute("SELECT COUNT(*) FROM pg_locks l JOIN pg_database d "
                           "ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted "
                           "AND d.datname = %s", (database,)).fetchone()
    return int(row[0])


async def test_of_two_electors_on_one_database_exactly_one_leads(pg_server, database):
    a, b = leader(pg_server, database, "a"), leader(pg_server, database, "b")
    async with running(a, b):
        await until(lambda: a.is_leader or b.is_leader)
        for _ in range(10):  # several retry periods: it stays that way
            assert [a.is_leader, b.is_leader].count(True) == 1
            await asyncio.sleep(RETRY / 2)
        first, other = (a, b) if a.is_leader else (b, a)
        assert first.valid_for() == HELD and other.valid_for() == 0.0
        assert first.changes == [True] and other.changes == []
        assert advisory_locks(pg_server, database) == 1
    assert not a.is_leader and not b.is_leader
    assert advisory_locks(pg_server, database) == 0


async def test_a_terminated_lock_connection_loses_at_once_and_the_other_takes_over(
        pg_server, database):
    a, b = leader(pg_server, database, "a"), leader(pg_server, database, "b")
    async with running(a, b):
        await until(lambda: a.is_leader or b.is_leader)
        first, other = (a, b) if a.is_leader else (b, a)
        await asyncio.sleep(RETRY)  # mid-way between two checks
        pid = first._conn.info.backend_pid
        killed_at = time.perf_counter()
        assert pg_server.terminate(pid=pid) == 1
        lost = await until(lambda: first.valid_for() == 0.0, timeout=1.0, step=0.001)
        assert first.changes == [True, False] and not first.is_leader
        took_over = await until(lambda: other.is_leader, timeout=5.0)
        failover = time.perf_counter() - killed_at
        print(f"\nlost {lost * 1e3:.1f} ms after pg_terminate_backend; "
              f"the other led {failover * 1e3:.0f} ms after it")
        assert lost < 0.25
        assert took_over <= RETRY * JITTER + 0.3
        assert other.valid_for() == HELD
        await asyncio.sleep(3 * RETRY)  # the old leader does not take it back
        assert other.is_leader and not first.is_leader
        assert advisory_locks(pg_server, database) == 1


async def test_the_fence_sees_a_closed_connection_before_the_loop_does(pg_server, database):
    """valid_for() (asked before every POST) looks at the idle socket itself."""
    a = leader(pg_server, database, "a", retry_period=1.5, renew_deadline=3.0)
    async with running(a):
        await until(lambda: a.is_leader)
        loop = asyncio.get_running_loop()
        fd = a._conn.fileno()
        loop.remove_reader(fd)  # the loop's own watch is off: only the fence can see it
        pg_server.terminate(pid=a._conn.info.backend_pid)
        time.sleep(0.1)  # blocking: the loop gets no chance to run
        assert a.valid_for() == 0.0
        assert a.changes == [True, False]


async def test_release_hands_the_lock_over_within_a_retry_period(pg_server, database):
    a, b = leader(pg_server, database, "a"), leader(pg_server, database, "b")
    async with running(a, b):
        await until(lambda: a.is_leader or b.is_leader)
        first, other = (a, b) if a.is_leader else (b, a)
        await first.release()
        assert not first.is_leader and first.valid_for() == 0.0
        assert await until(lambda: other.is_leader) <= RETRY * JITTER + 0.3


async def test_a_leader_whose_checks_hang_steps_down_by_the_renew_deadline(
        pg_server, database, monkeypatch):
    a = leader(pg_server, database, "a", retry_period=0.1, renew_deadline=0.5)
    async with running(a):
        await until(lambda: a.is_leader)
        real = a._query

        async def hang(conn, query, params):
            if "pg_locks" in query:
                await asyncio.sleep(3600)
            return await real(conn, query, params)

        monkeypatch.setattr(a, "_query", hang)
        started = time.perf_counter()
        await until(lambda: a.valid_for() == 0.0, timeout=2.0)
        assert time.perf_counter() - started <= 0.5 + 0.2
        await until(lambda: not a.is_leader, timeout=2.0)
        assert a.changes == [True, False]


async def test_a_server_restart_costs_leadership_and_one_elector_leads_again(
        pg_server, database):
    a, b = leader(pg_server, database, "a"), leader(pg_server, database, "b")
    async with running(a, b):
        await until(lambda: a.is_leader or b.is_leader)
        first = a if a.is_leader else b
        pg_server.restart()
        assert first.valid_for() == 0.0 or await until(lambda: first.valid_for() == 0.0)
        await until(lambda: a.is_leader or b.is_leader, timeout=10.0)
        assert [a.is_leader, b.is_leader].count(True) == 1


async def test_a_wrong_password_never_leads_and_is_never_logged(pg_server, database):
    url = pg_server.url(database).replace(PASSWORD, "wrong-pw-123")
    elector = AdvisoryLeader(AdvisorySettings(url=url, identity="x", retry_period=0.1,
                                              renew_deadline=1.0, idle_timeout=2.0))
    with structlog.testing.capture_logs() as logs:
        async with running(elector):
            await asyncio.sleep(0.5)
            assert not elector.is_leader and elector.valid_for() == 0.0
    errors = [e for e in logs if e["event"] == "leader_lock_error"]
    assert errors and "password authentication failed" in errors[0]["error"]
    assert "wrong-pw-123" not in repr(logs)
    assert errors[0]["database"] == f"postgresql://postgres@127.0.0.1:{pg_server.port}/{database}"


async def test_the_password_may_come_from_a_file(pg_server, database, tmp_path):
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    elector = AdvisoryLeader(AdvisorySettings(
        url=pg_server.url(database, password=False), identity="x", retry_period=0.1,
        renew_deadline=1.0, idle_timeout=2.0, password_file=str(secret)))
    async with running(elector):
        await until(lambda: elector.is_leader)


def test_settings_are_checked_and_the_key_is_fixed_per_name():
    with pytest.raises(ConfigError):
        AdvisorySettings(url="postgresql://h/db", identity="")
    with pytest.raises(ConfigError):
        AdvisorySettings(url="postgresql://h/db", identity="x", retry_period=5,
                         renew_deadline=2)
    with pytest.raises(ConfigError):
        AdvisorySettings(url="postgresql://h/db", identity="x", idle_timeout=5)
    assert lock_key("ailake-reconciler") == lock_key("ailake-reconciler")
    assert lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("a") < 2**63
    s = AdvisorySettings(url="postgresql://h/db", identity="pod-a")
    elector = AdvisoryLeader(s)
    assert elector.settings.identity == elector.identity == "pod-a"
    assert not elector.is_leader and elector.valid_for() == 0.0
